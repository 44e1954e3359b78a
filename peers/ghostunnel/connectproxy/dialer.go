// Package connectproxy is meshbridge's minimal HTTP CONNECT dialer for golang.org/x/net/proxy,
// written for the Ghostunnel peer build (see go.mod for why). It is not the upstream package.
package connectproxy

import (
	"bufio"
	"context"
	"encoding/base64"
	"fmt"
	"net"
	"net/http"
	"net/url"

	"golang.org/x/net/proxy"
)

type dialer struct {
	proxyURL *url.URL
	forward  proxy.Dialer
}

// ConnectProxy returns a proxy.Dialer that tunnels through an HTTP proxy with CONNECT.
func ConnectProxy(u *url.URL, forward proxy.Dialer) (proxy.Dialer, error) {
	if u.Host == "" {
		return nil, fmt.Errorf("connectproxy: proxy URL %q has no host", u.String())
	}
	return &dialer{proxyURL: u, forward: forward}, nil
}

func (d *dialer) Dial(network, addr string) (net.Conn, error) {
	return d.DialContext(context.Background(), network, addr)
}

func (d *dialer) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	var conn net.Conn
	var err error
	if cd, ok := d.forward.(proxy.ContextDialer); ok {
		conn, err = cd.DialContext(ctx, "tcp", d.proxyURL.Host)
	} else {
		conn, err = d.forward.Dial("tcp", d.proxyURL.Host)
	}
	if err != nil {
		return nil, err
	}
	req := &http.Request{Method: http.MethodConnect, URL: &url.URL{Opaque: addr}, Host: addr, Header: http.Header{}}
	if d.proxyURL.User != nil {
		pw, _ := d.proxyURL.User.Password()
		creds := base64.StdEncoding.EncodeToString([]byte(d.proxyURL.User.Username() + ":" + pw))
		req.Header.Set("Proxy-Authorization", "Basic "+creds)
	}
	if err := req.Write(conn); err != nil {
		conn.Close()
		return nil, err
	}
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, req)
	if err != nil {
		conn.Close()
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		conn.Close()
		return nil, fmt.Errorf("connectproxy: proxy answered %s", resp.Status)
	}
	if br.Buffered() > 0 {
		conn.Close()
		return nil, fmt.Errorf("connectproxy: proxy sent data before the tunnel was established")
	}
	return conn, nil
}
