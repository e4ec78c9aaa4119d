package optimd_test

import (
	"bytes"
	"errors"
	"fmt"
	"math"
	"slices"
	"strings"
	"testing"

	"github.com/optimd/optimd/clients/go/internal/daemontest"
	"github.com/optimd/optimd/clients/go/optimd"
)

// TestPlaceMatchesPython: the expected values were computed once with
// Python's hashlib, the function the Python client's optimd.place uses:
//
//	w = lambda u, n: int.from_bytes(hashlib.blake2b(f"{u}\0{n}".encode(), digest_size=8).digest(), "big")
//	max(urls, key=lambda u: (w(u, n), u))
//
// (/usr/bin/python3, Debian 12), over the first three URLs and over all
// four; they are literals so that a Go and a Python worker are checked to
// agree, not Go against itself.
func TestPlaceMatchesPython(t *testing.T) {
	urls := []string{"tcp://10.0.0.1:7878", "tcp://10.0.0.2:7878", "tcp://10.0.0.3:7878", "tcp://10.0.0.4:7878"}
	for _, c := range []struct {
		url, name string
		weight    uint64
	}{
		{"tcp://10.0.0.1:7878", "w", 0xa7cce5bbc4097a9b},
		{"tcp://10.0.0.1:7878", "héllo", 0x1c54b32253fffa3f},
		{"tcp://10.0.0.1:7878", "", 0xa54c45525dc01d1b},
	} {
		if got := optimd.RendezvousWeight(c.url, c.name); got != c.weight {
			t.Errorf("RendezvousWeight(%q, %q) = %#016x, Python says %#016x", c.url, c.name, got, c.weight)
		}
	}
	// Index into urls of the holder among urls[:3], then among all four.
	cases := []struct {
		name     string
		on3, on4 int
	}{
		{"", 0, 3}, {"w", 0, 0}, {"b", 1, 1}, {"emb", 0, 0},
		{"layer1.weight", 0, 0}, {"layer1.bias", 0, 0}, {"layer2.weight", 1, 3}, {"layer2.bias", 1, 1},
		{"héllo", 2, 2}, {"日本", 1, 1}, {strings.Repeat("x", 100), 2, 2},
		{"p0", 2, 2}, {"p1", 2, 2}, {"p2", 1, 1}, {"p3", 2, 2}, {"p4", 2, 2}, {"p5", 0, 0}, {"p6", 2, 2},
		{"p7", 2, 2}, {"p8", 0, 3}, {"p9", 1, 1}, {"p10", 1, 1}, {"p11", 2, 3}, {"p12", 0, 0},
	}
	reversed3 := slices.Clone(urls[:3])
	slices.Reverse(reversed3)
	for _, c := range cases {
		if got := optimd.Place(c.name, urls[:3]); got != urls[c.on3] {
			t.Errorf("Place(%q, 3 servers) = %s, Python says %s", c.name, got, urls[c.on3])
		}
		if got := optimd.Place(c.name, reversed3); got != urls[c.on3] {
			t.Errorf("Place(%q, 3 servers reversed) = %s, want %s whatever the order", c.name, got, urls[c.on3])
		}
		if got := optimd.Place(c.name, urls); got != urls[c.on4] {
			t.Errorf("Place(%q, 4 servers) = %s, Python says %s", c.name, got, urls[c.on4])
		}
	}
	if got := optimd.Place("w", nil); got != "" {
		t.Errorf("Place with no servers = %q, want \"\"", got)
	}
}

// lcg makes reproducible gradients: the same sequence for both runs.
type lcg uint64

func (g *lcg) next() float32 {
	*g = *g*6364136223846793005 + 1442695040888963407
	return float32(int32(uint64(*g)>>33)%2001-1000) / 256
}

func (g *lcg) vec(n int) []float32 {
	v := make([]float32, n)
	for i := range v {
		v[i] = g.next()
	}
	return v
}

// clusterNames picks parameter names until every one of urls holds at
// least two, so that no server's share is vacuously empty.
func clusterNames(urls []string) []string {
	count := map[string]int{}
	var names []string
	for i := 0; ; i++ {
		full := true
		for _, u := range urls {
			if count[u] < 2 {
				full = false
			}
		}
		if full && len(names) >= 8 {
			return names
		}
		name := fmt.Sprintf("layer%d.weight", i)
		names = append(names, name)
		count[optimd.Place(name, urls)]++
	}
}

func paramNames(info *optimd.SessionInfo) []string {
	var out []string
	for _, p := range info.Params {
		out = append(out, p.Name)
	}
	slices.Sort(out)
	return out
}

// TestClusterMatchesOneServer: the same AdamW run (with a step scheduler)
// on three daemons and on one ends bit-identical, compared after every
// step; each server holds exactly the parameters Place gives it and steps
// on every call. Then a refused step names its server and the servers
// that applied it, and ClipNorm is refused with several servers.
func TestClusterMatchesOneServer(t *testing.T) {
	ctx := testCtx(t)
	var urls []string
	for i := 0; i < 3; i++ {
		urls = append(urls, daemontest.Start(t).URL)
	}
	single := daemontest.Start(t).URL

	three, err := optimd.NewCluster(ctx, urls, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { three.Close() })
	one, err := optimd.NewCluster(ctx, []string{single}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { one.Close() })

	opts := &optimd.OpenOptions{
		Hparams:      optimd.Hparams{"lr": 0.01, "weight_decay": 0.05},
		Scheduler:    "step",
		SchedHparams: optimd.Hparams{"step_size": 3, "gamma": 0.5},
	}
	s3 := try(three.Open(ctx, "run", "adamw", opts)).must(t)
	s1 := try(one.Open(ctx, "run", "adamw", opts)).must(t)

	names := clusterNames(urls)
	gen := lcg(7)
	params := map[string]optimd.Tensor{}
	for i, n := range names {
		params[n] = optimd.FromFloat32(gen.vec(3+i%4*5), uint64(3+i%4*5))
	}
	if got := try(three.Register(ctx, s3, params)).must(t); got != uint64(len(names)) {
		t.Fatalf("cluster registered %d, want %d", got, len(names))
	}
	try(one.Register(ctx, s1, params)).must(t)

	const steps = 8
	for step := 1; step <= steps; step++ {
		grads := map[string]optimd.Tensor{}
		for n, p := range params {
			grads[n] = optimd.FromFloat32(gen.vec(p.Len()), p.Shape...)
		}
		r3 := try(three.Step(ctx, s3, grads, nil)).must(t)
		r1 := try(one.Step(ctx, s1, grads, nil)).must(t)
		if r3.Steps() != uint64(step) || r3.LR() != r1.LR() || r3.NextLR() != r1.NextLR() || r3.Duplicate() {
			t.Fatalf("step %d: cluster steps %d lr %v next %v dup %v; one server lr %v next %v",
				step, r3.Steps(), r3.LR(), r3.NextLR(), r3.Duplicate(), r1.LR(), r1.NextLR())
		}
		if len(r3.Params) != len(names) || len(r1.Params) != len(names) {
			t.Fatalf("step %d: %d and %d parameters back, want %d", step, len(r3.Params), len(r1.Params), len(names))
		}
		for n, want := range r1.Params {
			if got := r3.Params[n]; !bytes.Equal(got.Data, want.Data) || !slices.Equal(got.Shape, want.Shape) {
				t.Fatalf("step %d: %s differs between 3 servers and 1", step, n)
			}
		}
	}
	// The updates were not no-ops, so equality above says something.
	pulled3 := try(three.Pull(ctx, s3, nil)).must(t)
	pulled1 := try(one.Pull(ctx, s1, nil)).must(t)
	for _, n := range names {
		if bytes.Equal(pulled1[n].Data, params[n].Data) {
			t.Fatalf("%s did not move in %d steps", n, steps)
		}
		if !bytes.Equal(pulled3[n].Data, pulled1[n].Data) {
			t.Fatalf("pulled %s differs between 3 servers and 1", n)
		}
	}
	some := try(three.Pull(ctx, s3, names[:3])).must(t)
	if len(some) != 3 || !bytes.Equal(some[names[2]].Data, pulled1[names[2]].Data) {
		t.Fatalf("pull of 3 names gave %d", len(some))
	}

	infos := try(three.Info(ctx, s3, "")).must(t)
	for _, u := range urls {
		var want []string
		for _, n := range names {
			if optimd.Place(n, urls) == u {
				want = append(want, n)
			}
		}
		slices.Sort(want)
		if got := paramNames(infos[u]); !slices.Equal(got, want) {
			t.Errorf("server %s holds %v, Place says %v", u, got, want)
		}
		if infos[u].Steps != steps {
			t.Errorf("server %s stepped %d times, want %d", u, infos[u].Steps, steps)
		}
	}

	_, err = three.Step(ctx, s3, nil, &optimd.StepOptions{ClipNorm: &optimd.ClipNorm{MaxNorm: 1}})
	if !errors.Is(err, optimd.ErrClusterClipNorm) {
		t.Fatalf("ClipNorm on 3 servers: %v", err)
	}

	// A gradient of the wrong length for a parameter of the last server:
	// the first two apply the step, the last refuses it.
	var onLast string
	for _, n := range names {
		if optimd.Place(n, urls) == urls[2] {
			onLast = n
			break
		}
	}
	_, err = three.Step(ctx, s3, map[string]optimd.Tensor{onLast: optimd.FromFloat32([]float32{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11})}, nil)
	var ce *optimd.ClusterError
	var se *optimd.ServerError
	if !errors.As(err, &ce) || !errors.As(err, &se) || ce.URL != urls[2] || !slices.Equal(ce.Applied, urls[:2]) {
		t.Fatalf("bad step on the last server: %v", err)
	}
	if !strings.Contains(err.Error(), urls[2]) {
		t.Errorf("error does not name the server: %v", err)
	}
	try(0, three.CloseSession(ctx, s3)).must(t)
	if _, err := three.Info(ctx, s3, ""); !errors.Is(err, optimd.ErrUnknownSession) {
		t.Fatalf("info after close: %v", err)
	}
}

// TestClusterGrowMovesOnlyToNewServer: the same parameters registered on
// three daemons and on those three plus a fourth; each of the first three
// holds a subset of what it held before, and every parameter that moved is
// on the new one.
func TestClusterGrowMovesOnlyToNewServer(t *testing.T) {
	ctx := testCtx(t)
	var urls []string
	for i := 0; i < 4; i++ {
		urls = append(urls, daemontest.Start(t).URL)
	}
	var names []string
	for i := 0; i < 64; i++ {
		names = append(names, fmt.Sprintf("blocks.%d.attn.weight", i))
	}
	params := map[string]optimd.Tensor{}
	for _, n := range names {
		params[n] = optimd.FromFloat32([]float32{1, 2})
	}
	held := func(urls []string, session string) map[string]string {
		c, err := optimd.NewCluster(ctx, urls, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		s := try(c.Open(ctx, session, "sgd", &optimd.OpenOptions{Hparams: optimd.Hparams{"lr": 0.1}})).must(t)
		try(c.Register(ctx, s, params)).must(t)
		where := map[string]string{}
		for u, info := range try(c.Info(ctx, s, "")).must(t) {
			for _, n := range paramNames(info) {
				if prev, dup := where[n]; dup {
					t.Fatalf("%s on both %s and %s", n, prev, u)
				}
				where[n] = u
			}
		}
		if len(where) != len(names) {
			t.Fatalf("%d servers hold %d parameters, want %d", len(urls), len(where), len(names))
		}
		return where
	}
	before := held(urls[:3], "before")
	after := held(urls, "after")
	moved := 0
	for _, n := range names {
		if after[n] == before[n] {
			continue
		}
		moved++
		if after[n] != urls[3] {
			t.Errorf("%s moved from %s to %s, not to the new server", n, before[n], after[n])
		}
	}
	// About a quarter should move; none or all would mean the new server
	// is ignored or the placement reshuffled.
	if moved == 0 || moved == len(names) {
		t.Fatalf("%d of %d parameters moved", moved, len(names))
	}
	if frac := float64(moved) / float64(len(names)); math.Abs(frac-0.25) > 0.2 {
		t.Errorf("%.2f of the parameters moved, expected about 1/4", frac)
	}
}
