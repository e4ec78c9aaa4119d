package optimd_test

import (
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/vmihailenco/msgpack/v5"

	"github.com/optimd/optimd/clients/go/optimd"
)

// spPeer is a bare SP-over-TCP REP peer (the SP TCP mapping: an 8-byte
// handshake, then 8-byte big-endian length-prefixed messages whose body
// starts with REQ's 4-byte request id). Its first connection drops the
// first request it reads; later connections answer hello.
type spPeer struct {
	ln       net.Listener
	mu       sync.Mutex
	requests int
}

func newSPPeer(t *testing.T) *spPeer {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &spPeer{ln: ln}
	t.Cleanup(func() { ln.Close() })
	go p.serve()
	return p
}

func (p *spPeer) serve() {
	for first := true; ; first = false {
		conn, err := p.ln.Accept()
		if err != nil {
			return
		}
		go p.handle(conn, first)
	}
}

func (p *spPeer) handle(conn net.Conn, drop bool) {
	defer conn.Close()
	// 0x31 = REP (0x30 = REQ, the peer it accepts).
	if _, err := conn.Write([]byte{0, 'S', 'P', 0, 0, 0x31, 0, 0}); err != nil {
		return
	}
	hs := make([]byte, 8)
	if _, err := io.ReadFull(conn, hs); err != nil || hs[5] != 0x30 {
		return
	}
	for {
		var n uint64
		if err := binary.Read(conn, binary.BigEndian, &n); err != nil || n < 4 || n > 1<<20 {
			return
		}
		body := make([]byte, n)
		if _, err := io.ReadFull(conn, body); err != nil {
			return
		}
		p.mu.Lock()
		p.requests++
		p.mu.Unlock()
		if drop {
			return
		}
		var req map[string]any
		if err := msgpack.Unmarshal(body[4:], &req); err != nil {
			return
		}
		reply, _ := msgpack.Marshal(map[string]any{"v": 1, "id": req["id"], "ok": true, "server": "optimd",
			"version": "fake", "protocol": 1, "abi": []int{1, 0}, "max_message": 1024})
		msg := append(append([]byte{}, body[:4]...), reply...)
		if binary.Write(conn, binary.BigEndian, uint64(len(msg))) != nil || binary.Write(conn, binary.BigEndian, msg) != nil {
			return
		}
	}
}

func (p *spPeer) count() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.requests
}

// TestNoResend: a request whose connection drops before the reply fails;
// the client does not send it again on the next connection (a resent
// unsequenced step would be applied twice). The peer answers requests on
// later connections, so a resend would turn the failure into a success.
func TestNoResend(t *testing.T) {
	peer := newSPPeer(t)
	c, err := optimd.Dial("tcp://"+peer.ln.Addr().String(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, err = c.Hello(ctx, "")
	if err == nil {
		t.Fatalf("a request whose connection dropped succeeded (resent): %d requests seen", peer.count())
	}
	if errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("the request neither failed nor got a reply: %v", err)
	}
	// The client reconnects and goes on working.
	h, err := c.Hello(ctx, "")
	if err != nil || h.Version != "fake" {
		t.Fatalf("after reconnecting: %+v, %v", h, err)
	}
	if n := peer.count(); n != 2 {
		t.Fatalf("the peer saw %d requests, want 2 (one each)", n)
	}
}
