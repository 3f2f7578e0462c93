module github.com/credmatrix/credmatrix/deploy

go 1.26.0

require (
	github.com/credmatrix/credmatrix/platform v0.1.0
	github.com/credmatrix/credmatrix/proto v0.1.0
	github.com/google/go-cmp v0.7.0
	google.golang.org/grpc v1.85.0
	sigs.k8s.io/yaml v1.6.0
)

require (
	go.yaml.in/yaml/v2 v2.4.2 // indirect
	golang.org/x/net v0.60.0 // indirect
	golang.org/x/sys v0.48.0 // indirect
	golang.org/x/text v0.42.0 // indirect
	google.golang.org/genproto/googleapis/rpc v0.0.0-20260928230214-8a89bd6388cc // indirect
	google.golang.org/protobuf v1.36.12 // indirect
)
