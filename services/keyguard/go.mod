module github.com/credmatrix/credmatrix/services/keyguard

go 1.26
