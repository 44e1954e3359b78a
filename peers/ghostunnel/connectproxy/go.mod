// A stand-in for github.com/wrouesnel/go.connect-proxy-scheme, whose pinned pseudo-version the Go
// module proxy does not serve (403). Ghostunnel only uses it for --connect-proxy (an HTTP CONNECT
// dialer registered with golang.org/x/net/proxy); nothing meshbridge tests goes through it.
module github.com/wrouesnel/go.connect-proxy-scheme

go 1.22

require golang.org/x/net v0.30.0
