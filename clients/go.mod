module github.com/credmatrix/credmatrix/clients

go 1.26
