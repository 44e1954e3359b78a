// etcd for meshbridge's tests: the kube-apiserver's storage. Upstream's own main
// (go.etcd.io/etcd/server/v3/main.go) is this same call; it lives in a package whose import path ends in
// /v3, so `go install` would name the binary "server". This wrapper names it "etcd".
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
