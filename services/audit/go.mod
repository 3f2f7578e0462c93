module github.com/credmatrix/credmatrix/services/audit

go 1.26
