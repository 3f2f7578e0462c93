module github.com/credmatrix/credmatrix/services/broker

go 1.26
