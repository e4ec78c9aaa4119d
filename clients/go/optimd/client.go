package optimd

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"go.nanomsg.org/mangos/v3"
	"go.nanomsg.org/mangos/v3/protocol/req"

	// The transports the daemon listens on.
	_ "go.nanomsg.org/mangos/v3/transport/ipc"
	_ "go.nanomsg.org/mangos/v3/transport/tcp"
	_ "go.nanomsg.org/mangos/v3/transport/tlstcp"
	_ "go.nanomsg.org/mangos/v3/transport/ws"
)

// DefaultURL is where the daemon listens unless told otherwise.
const DefaultURL = "tcp://127.0.0.1:7878"

// Options tune a Client. The zero value is usable.
type Options struct {
	// Timeout bounds a request whose context has no deadline; 0 means no
	// bound beyond the context's.
	Timeout time.Duration
	// DialAsync connects in the background (and keeps retrying) instead of
	// failing Dial when the daemon is not reachable yet.
	DialAsync bool
	// TLS configures a tls+tcp:// connection: the CA that signed the
	// daemon's certificate (RootCAs) and, where the daemon asks for one,
	// this client's certificate. TLSConfigFromFiles builds one from PEM
	// files. Required for tls+tcp:// URLs, ignored otherwise.
	TLS *tls.Config
}

// TLSFiles names PEM files for TLSConfigFromFiles.
type TLSFiles struct {
	// CA is the certificate (or bundle) the daemon's certificate must
	// chain to. Empty: the system's roots.
	CA string
	// Cert and Key are this client's certificate and private key, for a
	// daemon that requires client certificates. Both or neither.
	Cert, Key string
	// ServerName is the name the daemon's certificate must carry. Empty:
	// the host of the URL (an IP address is matched against the
	// certificate's IP SANs).
	ServerName string
}

// TLSConfigFromFiles reads the PEM files of f into a *tls.Config for
// Options.TLS.
func TLSConfigFromFiles(f TLSFiles) (*tls.Config, error) {
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: f.ServerName}
	if f.CA != "" {
		pem, err := os.ReadFile(f.CA)
		if err != nil {
			return nil, fmt.Errorf("optimd: TLS CA: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("optimd: TLS CA %s: no PEM certificate in it", f.CA)
		}
		cfg.RootCAs = pool
	}
	if (f.Cert == "") != (f.Key == "") {
		return nil, errors.New("optimd: TLS client certificate and key go together: give both or neither")
	}
	if f.Cert != "" {
		pair, err := tls.LoadX509KeyPair(f.Cert, f.Key)
		if err != nil {
			return nil, fmt.Errorf("optimd: TLS client certificate: %w", err)
		}
		cfg.Certificates = []tls.Certificate{pair}
	}
	return cfg, nil
}

// Client is a connection to one daemon: one REQ socket. It is safe for
// concurrent use; each request runs on its own REQ context, so several can
// be in flight at once.
//
// A Client never resends a request by itself: an unsequenced step sent
// twice is applied twice. To retry a step safely, give it a Seq (see
// StepOptions) and resend it with the same Seq.
type Client struct {
	sock    mangos.Socket
	timeout time.Duration
	lastID  atomic.Uint64
}

// Dial connects to the daemon at url (tcp://host:port,
// tls+tcp://host:port, ipc:///path or ws://host:port/path). opts may be
// nil, except for tls+tcp:// where opts.TLS is required.
//
// Without DialAsync, a tls+tcp:// Dial completes the TLS handshake and the
// SP header exchange, so a daemon that refuses this client's certificate
// (or one whose certificate this client does not trust) fails Dial.
func Dial(url string, opts *Options) (*Client, error) {
	if opts == nil {
		opts = &Options{}
	}
	sock, err := req.NewSocket()
	if err != nil {
		return nil, err
	}
	// REQ resends a request that got no reply after a while; a resent
	// unsequenced step would be applied twice (protocol.md §1). 0 = never.
	if err := sock.SetOption(mangos.OptionRetryTime, time.Duration(0)); err != nil {
		sock.Close()
		return nil, err
	}
	// Replies with tensors exceed mangos' 1 MiB default; 0 = no limit.
	if err := sock.SetOption(mangos.OptionMaxRecvSize, 0); err != nil {
		sock.Close()
		return nil, err
	}
	dialOpts := map[string]any{mangos.OptionDialAsynch: opts.DialAsync}
	if strings.HasPrefix(url, "tls+tcp://") {
		if opts.TLS == nil {
			sock.Close()
			return nil, fmt.Errorf("optimd: dial %s: a tls+tcp:// URL needs Options.TLS (see TLSConfigFromFiles)", url)
		}
		dialOpts[mangos.OptionTLSConfig] = opts.TLS
	}
	if err := sock.DialOptions(url, dialOpts); err != nil {
		sock.Close()
		if _, isTLS := dialOpts[mangos.OptionTLSConfig]; isTLS && (errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET)) {
			// The daemon refuses a client's certificate by dropping the
			// connection (in the handshake, or under TLS 1.3 just after the
			// client's side of it), which reads as EOF, not as an alert.
			return nil, fmt.Errorf("optimd: dial %s: the daemon closed the connection after the TLS handshake "+
				"(most likely it refused this client's certificate: none given, or not signed by the CA the daemon trusts): %w", url, err)
		}
		return nil, fmt.Errorf("optimd: dial %s: %w", url, err)
	}
	return &Client{sock: sock, timeout: opts.Timeout}, nil
}

// Close closes the connection. Sessions stay on the daemon.
func (c *Client) Close() error {
	return c.sock.Close()
}

// Do sends req with a fresh request id (stored in req.ID) and returns the
// raw reply, for the matching Parse*Reply function. The op methods (Step,
// Pull, ...) are Do plus parsing. The call returns when the reply arrives,
// ctx is done, or the client's Timeout passes.
func (c *Client) Do(ctx context.Context, r *Request) ([]byte, error) {
	f, err := c.send(ctx, r)
	if err != nil {
		return nil, err
	}
	return f.wait()
}

// inflight is a request sent on its own REQ context whose reply has not
// been read yet. Several can be in flight on one socket at once (a sliced
// step pipelines its parts this way).
type inflight struct {
	r       *Request
	ctx     context.Context
	mctx    mangos.Context
	release func()
}

// send is the first half of Do: it gives r a fresh id, encodes it and
// hands it to a new REQ context, returning once it is sent (in the order
// of the calls, for calls from one goroutine). The caller must call wait.
func (c *Client) send(ctx context.Context, r *Request) (*inflight, error) {
	cancel := context.CancelFunc(func() {})
	if c.timeout > 0 {
		if _, ok := ctx.Deadline(); !ok {
			ctx, cancel = context.WithTimeout(ctx, c.timeout)
		}
	}
	if err := ctx.Err(); err != nil {
		cancel()
		return nil, fmt.Errorf("optimd: %s: %w", r.Op, err)
	}
	r.ID = c.lastID.Add(1)
	body, err := r.Encode()
	if err != nil {
		cancel()
		return nil, fmt.Errorf("optimd: %s: encode: %w", r.Op, err)
	}
	mctx, err := c.sock.OpenContext()
	if err != nil {
		cancel()
		return nil, fmt.Errorf("optimd: %s: %w", r.Op, err)
	}
	if err := mctx.SetOption(mangos.OptionRetryTime, time.Duration(0)); err != nil {
		mctx.Close()
		cancel()
		return nil, err
	}
	// Closing the REQ context wakes a blocked Send or Recv, so a cancelled
	// or expired ctx ends the call at once.
	stop := context.AfterFunc(ctx, func() { mctx.Close() })
	f := &inflight{r: r, ctx: ctx, mctx: mctx, release: func() {
		stop()
		mctx.Close()
		cancel()
	}}
	if err := mctx.Send(body); err != nil {
		err = f.wrap(err)
		f.release()
		return nil, err
	}
	return f, nil
}

// wait is the second half of Do: the reply to the request send sent.
func (f *inflight) wait() ([]byte, error) {
	defer f.release()
	reply, err := f.mctx.Recv()
	if err != nil {
		return nil, f.wrap(err)
	}
	return reply, nil
}

// wrap names the op in a transport error, or gives the context's error
// when the context ended the call. Call it before release, which cancels
// the context of the client's Timeout.
func (f *inflight) wrap(err error) error {
	if ctxErr := f.ctx.Err(); ctxErr != nil {
		return fmt.Errorf("optimd: %s: %w", f.r.Op, ctxErr)
	}
	return fmt.Errorf("optimd: %s: %w", f.r.Op, err)
}

// call is Do followed by parse.
func call[T any](ctx context.Context, c *Client, r *Request, parse func(id uint64, b []byte) (T, error)) (T, error) {
	b, err := c.Do(ctx, r)
	if err != nil {
		var zero T
		return zero, err
	}
	return parse(r.ID, b)
}
