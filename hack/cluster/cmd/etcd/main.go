// Command etcd is the etcd server, built from go.etcd.io/etcd/server/v3's etcdmain package.
//
// The etcd release binary's own main package lives in the go.etcd.io/etcd/v3 root module, whose
// go.mod replaces its sibling modules with relative paths and so cannot be consumed as a dependency;
// etcdmain.Main is the whole of that main, so this file stands in for it.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
