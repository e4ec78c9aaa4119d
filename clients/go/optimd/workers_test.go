package optimd_test

import (
	"context"
	"fmt"
	"math"
	"math/rand"
	"sync"
	"testing"
	"time"

	"github.com/optimd/optimd/clients/go/internal/daemontest"
	"github.com/optimd/optimd/clients/go/optimd"
)

// Sessions with workers (protocol.md, Workers) against the real daemon.

// dial connects one more client (a worker) to url.
func dial(t *testing.T, url string) *optimd.Client {
	t.Helper()
	c, err := optimd.Dial(url, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// gradsFor returns one gradient per worker, of n elements, each worker's at
// its own scale, so that float32 sums depend on their order.
func gradsFor(rng *rand.Rand, workers, n int) [][]float32 {
	scales := []float32{1e-3, 3.7, 1e3, 0.31}
	out := make([][]float32, workers)
	for w := range out {
		out[w] = make([]float32, n)
		for i := range out[w] {
			out[w][i] = float32(rng.NormFloat64()) * scales[w%len(scales)]
		}
	}
	return out
}

// rankOrderMean is a sync round's mean as protocol.md defines it: the
// gradients summed in rank order, each addition rounded to float32, then
// divided by their number.
func rankOrderMean(grads [][]float32) []float32 {
	out := append([]float32(nil), grads[0]...)
	for _, g := range grads[1:] {
		for i := range out {
			out[i] = float32(out[i] + g[i])
		}
	}
	for i := range out {
		out[i] = float32(out[i] / float32(len(grads)))
	}
	return out
}

// checkOrderMatters fails the test if summing grads in reverse order gives
// the same float32 mean: such data could not tell rank order from any
// other.
func checkOrderMatters(t *testing.T, grads [][]float32) {
	t.Helper()
	rev := make([][]float32, len(grads))
	for i := range grads {
		rev[i] = grads[len(grads)-1-i]
	}
	a, b := rankOrderMean(grads), rankOrderMean(rev)
	for i := range a {
		if a[i] != b[i] {
			return
		}
	}
	t.Fatal("test data: the mean does not depend on the summation order")
}

func sameBits(t *testing.T, what string, got, want []float32) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%s: %d values, want %d", what, len(got), len(want))
	}
	for i := range want {
		if math.Float32bits(got[i]) != math.Float32bits(want[i]) {
			t.Fatalf("%s[%d] = %v, want %v (bit-identical)", what, i, got[i], want[i])
		}
	}
}

// waitRound polls info until the session's sync round holds n pushes.
func waitRound(t *testing.T, ctx context.Context, c *optimd.Client, s optimd.Session, n uint64) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		info, err := c.Info(ctx, s, "")
		if err != nil {
			t.Fatal(err)
		}
		if info.Workers == nil {
			t.Fatal("info of a session with workers has no Workers")
		}
		if info.Workers.RoundPushes >= n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the round never reached %d pushes (has %d)", n, info.Workers.RoundPushes)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestWorkersSyncRankOrderMean: four workers push concurrently, arriving
// in a different order each round (each waits for the round to hold the
// ones before it); every worker gets the same parameters, bit-identical to
// a plain SGD session on the same daemon stepped with the rank-order mean
// computed here in float32.
func TestWorkersSyncRankOrderMean(t *testing.T) {
	d := daemontest.Start(t)
	c, ctx := dial(t, d.URL), testCtx(t)
	const workers, n, lr = 4, 257, 0.1
	sync0 := try(c.Open(ctx, "sync", "sgd", &optimd.OpenOptions{
		Hparams: optimd.Hparams{"lr": lr},
		Workers: &optimd.Workers{Mode: optimd.WorkersSync, Count: workers, TimeoutMS: 30000},
	})).must(t).Session
	ref := try(c.Open(ctx, "ref", "sgd", &optimd.OpenOptions{Hparams: optimd.Hparams{"lr": lr}})).must(t).Session

	names := make([]string, workers)
	clients := make([]*optimd.Client, workers)
	for i := range names {
		names[i] = fmt.Sprintf("w%d", i)
		clients[i] = dial(t, d.URL)
		j := try(clients[i].Join(ctx, sync0, names[i])).must(t)
		if j.Rank != uint64(i) || len(j.Workers.Members) != i+1 || j.Workers.Settings.Mode != optimd.WorkersSync {
			t.Fatalf("join %s: %+v", names[i], j)
		}
	}
	info := try(c.Info(ctx, sync0, "")).must(t)
	wantSettings := optimd.Workers{Mode: optimd.WorkersSync, Count: workers, Reduce: optimd.ReduceMean,
		TimeoutMS: 30000, OnTimeout: optimd.OnTimeoutFail}
	if info.Workers == nil || info.Workers.Settings != wantSettings {
		t.Fatalf("info workers %+v, want settings %+v", info.Workers, wantSettings)
	}
	if plain := try(c.Info(ctx, ref, "")).must(t); plain.Workers != nil {
		t.Fatalf("a plain session's info has workers %+v", plain.Workers)
	}

	rng := rand.New(rand.NewSource(7))
	p0 := make([]float32, n)
	for i := range p0 {
		p0[i] = float32(rng.NormFloat64())
	}
	for _, s := range []optimd.Session{sync0, ref} {
		try(c.Register(ctx, s, map[string]optimd.Tensor{"p": optimd.FromFloat32(p0)})).must(t)
	}

	orders := [][]int{{3, 1, 0, 2}, {2, 3, 1, 0}, {1, 0, 3, 2}}
	for round, order := range orders {
		grads := gradsFor(rng, workers, n)
		checkOrderMatters(t, grads)
		results := make([]*optimd.StepResult, workers)
		errs := make([]error, workers)
		var wg sync.WaitGroup
		for k, w := range order {
			wg.Add(1)
			go func(w int) {
				defer wg.Done()
				results[w], errs[w] = clients[w].Step(ctx, sync0,
					map[string]optimd.Tensor{"p": optimd.FromFloat32(grads[w])},
					&optimd.StepOptions{Worker: names[w]})
			}(w)
			if k < workers-1 {
				waitRound(t, ctx, c, sync0, uint64(k+1))
			}
		}
		wg.Wait()
		want := f32s(t, try(c.Step(ctx, ref,
			map[string]optimd.Tensor{"p": optimd.FromFloat32(rankOrderMean(grads))}, nil)).must(t).Params, "p")
		for w := range results {
			if errs[w] != nil {
				t.Fatalf("round %d, %s: %v", round+1, names[w], errs[w])
			}
			r := results[w]
			if r.Steps != uint64(round+1) || r.Combined != workers || r.Worker != names[w] ||
				r.Pushes != uint64(round+1) || r.Staleness != 0 {
				t.Fatalf("round %d, %s: steps %d combined %d worker %q pushes %d staleness %d", round+1, names[w],
					r.Steps, r.Combined, r.Worker, r.Pushes, r.Staleness)
			}
			sameBits(t, fmt.Sprintf("round %d, %s's p", round+1, names[w]), f32s(t, r.Params, "p"), want)
		}
	}
	pulled := try(c.Pull(ctx, sync0, nil)).must(t)
	sameBits(t, "pulled p", f32s(t, pulled, "p"), f32s(t, try(c.Pull(ctx, ref, nil)).must(t), "p"))
	if got := try(c.Info(ctx, sync0, "")).must(t).Steps; got != uint64(len(orders)) {
		t.Fatalf("steps %d after %d rounds", got, len(orders))
	}
}

// TestWorkersSyncTimeout: a round missing a worker fails every waiting
// push with ErrTimeout and applies nothing.
func TestWorkersSyncTimeout(t *testing.T) {
	c, ctx := connect(t)
	s := try(c.Open(ctx, "sync-timeout", "sgd", &optimd.OpenOptions{
		Hparams: optimd.Hparams{"lr": 0.5},
		Workers: &optimd.Workers{Mode: optimd.WorkersSync, Count: 2, TimeoutMS: 200},
	})).must(t).Session
	try(c.Join(ctx, s, "a")).must(t)
	try(c.Join(ctx, s, "b")).must(t)
	p := []float32{1, 2, 3}
	try(c.Register(ctx, s, map[string]optimd.Tensor{"p": optimd.FromFloat32(p)})).must(t)
	_, err := c.Step(ctx, s, map[string]optimd.Tensor{"p": optimd.FromFloat32([]float32{1, 1, 1})},
		&optimd.StepOptions{Worker: "a"})
	wantServerError(t, err, optimd.CodeTimeout, optimd.ErrTimeout)
	info := try(c.Info(ctx, s, "")).must(t)
	if info.Steps != 0 || info.Workers.RoundPushes != 0 {
		t.Fatalf("after a timed-out round: steps %d, round pushes %d", info.Steps, info.Workers.RoundPushes)
	}
	sameBits(t, "p", f32s(t, try(c.Pull(ctx, s, nil)).must(t), "p"), p)
}

// TestWorkersAsyncStaleness: with the pushes a, b, b, b, a, a's second push
// is 3 steps stale (b's three since a's first reply) and b's first is 1.
// A pull as a worker makes it fresh again; a push without the parameters
// in its reply does not.
func TestWorkersAsyncStaleness(t *testing.T) {
	c, ctx := connect(t)
	s := try(c.Open(ctx, "async", "sgd", &optimd.OpenOptions{
		Hparams: optimd.Hparams{"lr": 0.25},
		Workers: &optimd.Workers{Mode: optimd.WorkersAsync},
	})).must(t).Session
	try(c.Join(ctx, s, "a")).must(t)
	if j := try(c.Join(ctx, s, "b")).must(t); j.Rank != 1 || j.Workers.Settings.Mode != optimd.WorkersAsync {
		t.Fatalf("join b: %+v", j)
	}
	try(c.Register(ctx, s, map[string]optimd.Tensor{"p": optimd.FromFloat32([]float32{0, 0})})).must(t)
	g := map[string]optimd.Tensor{"p": optimd.FromFloat32([]float32{1, -1})}
	push := func(w string, opts *optimd.StepOptions) *optimd.StepResult {
		t.Helper()
		if opts == nil {
			opts = &optimd.StepOptions{}
		}
		opts.Worker = w
		return try(c.Step(ctx, s, g, opts)).must(t)
	}
	var seen []string
	for i, w := range []string{"a", "b", "b", "b", "a", "a"} {
		r := push(w, nil)
		if r.Worker != w || r.Steps != uint64(i+1) || r.Combined != 0 {
			t.Fatalf("push %d by %s: %+v", i+1, w, r)
		}
		seen = append(seen, fmt.Sprintf("%s%d", w, r.Staleness))
	}
	if fmt.Sprint(seen) != "[a0 b1 b0 b0 a3 a0]" {
		t.Fatalf("staleness of a, b, b, b, a, a: %v, want [a0 b1 b0 b0 a3 a0]", seen)
	}
	push("b", nil)
	try(c.PullAsWorker(ctx, s, "a", []string{"p"})).must(t)
	if r := push("a", nil); r.Staleness != 0 {
		t.Fatalf("after a pull as a: staleness %d, want 0", r.Staleness)
	}
	push("a", &optimd.StepOptions{NoReturn: true})
	if r := push("a", nil); r.Staleness != 1 || r.Pushes != 6 {
		t.Fatalf("after a push without the parameters: staleness %d pushes %d, want 1 and 6", r.Staleness, r.Pushes)
	}
	info := try(c.Info(ctx, s, "")).must(t)
	a, b := info.Workers.Member("a"), info.Workers.Member("b")
	if a == nil || b == nil || a.Pushes != 6 || b.Pushes != 4 || a.Rank != 0 || b.Rank != 1 || a.Waiting {
		t.Fatalf("members %+v", info.Workers.Members)
	}
	l := try(c.Leave(ctx, s, "a")).must(t)
	if len(l.Workers.Members) != 1 || l.Workers.Members[0].Name != "b" || l.Steps != 10 {
		t.Fatalf("leave a: %+v", l)
	}
}

// TestWorkersBounded: with max_staleness 1, a worker two pushes ahead of
// the slowest waits until the slowest pushes; its reply says so.
func TestWorkersBounded(t *testing.T) {
	d := daemontest.Start(t)
	c, ctx := dial(t, d.URL), testCtx(t)
	s := try(c.Open(ctx, "bounded", "sgd", &optimd.OpenOptions{
		Hparams: optimd.Hparams{"lr": 0.25},
		Workers: &optimd.Workers{Mode: optimd.WorkersBounded, MaxStaleness: 1, TimeoutMS: 20000},
	})).must(t).Session
	try(c.Join(ctx, s, "fast")).must(t)
	try(c.Join(ctx, s, "slow")).must(t)
	try(c.Register(ctx, s, map[string]optimd.Tensor{"p": optimd.FromFloat32([]float32{0})})).must(t)
	g := map[string]optimd.Tensor{"p": optimd.FromFloat32([]float32{1})}
	for i := uint64(0); i < 2; i++ {
		r := try(c.Step(ctx, s, g, &optimd.StepOptions{Worker: "fast"})).must(t)
		if r.Lead != i || r.Waited {
			t.Fatalf("fast's push %d: lead %d waited %v, want %d false", i+1, r.Lead, r.Waited, i)
		}
	}
	var third *optimd.StepResult
	var thirdErr error
	fastc := dial(t, d.URL)
	done := make(chan struct{})
	go func() {
		defer close(done)
		third, thirdErr = fastc.Step(ctx, s, g, &optimd.StepOptions{Worker: "fast"})
	}()
	deadline := time.Now().Add(20 * time.Second)
	for {
		info := try(c.Info(ctx, s, "")).must(t)
		if m := info.Workers.Member("fast"); m != nil && m.Waiting {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("fast's third push never waited")
		}
		time.Sleep(5 * time.Millisecond)
	}
	try(c.Step(ctx, s, g, &optimd.StepOptions{Worker: "slow"})).must(t)
	<-done
	if thirdErr != nil {
		t.Fatal(thirdErr)
	}
	if !third.Waited || third.Lead != 1 || third.Pushes != 3 {
		t.Fatalf("fast's third push: waited %v lead %d pushes %d, want true 1 3", third.Waited, third.Lead, third.Pushes)
	}
}

// TestWorkersRefusals: join on a plain session, pushes by no worker or an
// unknown one, and settings that do not fit the mode.
func TestWorkersRefusals(t *testing.T) {
	c, ctx := connect(t)
	plain := try(c.Open(ctx, "plain", "sgd", &optimd.OpenOptions{Hparams: optimd.Hparams{"lr": 0.1}})).must(t).Session
	_, err := c.Join(ctx, plain, "a")
	wantServerError(t, err, optimd.CodeBadRequest, optimd.ErrBadRequest)

	s := try(c.Open(ctx, "workers", "sgd", &optimd.OpenOptions{
		Hparams: optimd.Hparams{"lr": 0.1},
		Workers: &optimd.Workers{Mode: optimd.WorkersAsync},
	})).must(t).Session
	try(c.Join(ctx, s, "a")).must(t)
	try(c.Register(ctx, s, map[string]optimd.Tensor{"p": optimd.FromFloat32([]float32{0})})).must(t)
	g := map[string]optimd.Tensor{"p": optimd.FromFloat32([]float32{1})}
	_, err = c.Step(ctx, s, g, &optimd.StepOptions{Worker: "nobody"})
	wantServerError(t, err, optimd.CodeUnknownWorker, optimd.ErrUnknownWorker)
	_, err = c.Step(ctx, s, g, nil)
	wantServerError(t, err, optimd.CodeBadRequest, optimd.ErrBadRequest)
	_, err = c.PullAsWorker(ctx, s, "nobody", nil)
	wantServerError(t, err, optimd.CodeUnknownWorker, optimd.ErrUnknownWorker)
	_, err = c.Leave(ctx, s, "nobody")
	wantServerError(t, err, optimd.CodeUnknownWorker, optimd.ErrUnknownWorker)
	if info := try(c.Info(ctx, s, "")).must(t); info.Steps != 0 {
		t.Fatalf("refused pushes applied: steps %d", info.Steps)
	}
	for i, w := range []optimd.Workers{
		{Mode: "lockstep"}, {Mode: optimd.WorkersSync}, {Mode: optimd.WorkersAsync, Count: 2},
		{Mode: optimd.WorkersBounded, Reduce: optimd.ReduceSum}, {Mode: optimd.WorkersSync, Count: 2, MaxStaleness: 1},
	} {
		w := w
		_, err := c.Open(ctx, fmt.Sprintf("bad%d", i), "sgd", &optimd.OpenOptions{Workers: &w})
		wantServerError(t, err, optimd.CodeBadRequest, optimd.ErrBadRequest)
	}
}

// TestClusterSyncWorkers: two workers push to a session spread over two
// daemons; every push completes each server's round in turn, and the
// parameters equal a plain SGD session on a third daemon stepped with the
// rank-order mean.
func TestClusterSyncWorkers(t *testing.T) {
	ctx := testCtx(t)
	urls := []string{daemontest.Start(t).URL, daemontest.Start(t).URL}
	refc := dial(t, daemontest.Start(t).URL)
	names := clusterNames(urls)
	const lr = 0.05
	clusters := make([]*optimd.Cluster, 2)
	for i := range clusters {
		cl, err := optimd.NewCluster(ctx, urls, nil)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cl.Close() })
		clusters[i] = cl
	}
	s, err := clusters[0].Open(ctx, "cw", "sgd", &optimd.OpenOptions{
		Hparams: optimd.Hparams{"lr": lr},
		Workers: &optimd.Workers{Mode: optimd.WorkersSync, Count: 2, TimeoutMS: 30000},
	})
	if err != nil {
		t.Fatal(err)
	}
	ref := try(refc.Open(ctx, "ref", "sgd", &optimd.OpenOptions{Hparams: optimd.Hparams{"lr": lr}})).must(t).Session
	for rank, w := range []string{"a", "b"} {
		joined, err := clusters[0].Join(ctx, s, w)
		if err != nil {
			t.Fatal(err)
		}
		for _, u := range urls {
			if j := joined[u]; j == nil || j.Rank != uint64(rank) {
				t.Fatalf("join %s on %s: %+v", w, u, j)
			}
		}
	}
	rng := rand.New(rand.NewSource(3))
	model := map[string]optimd.Tensor{}
	for _, n := range names {
		v := make([]float32, 16)
		for i := range v {
			v[i] = float32(rng.NormFloat64())
		}
		model[n] = optimd.FromFloat32(v)
	}
	try(clusters[0].Register(ctx, s, model)).must(t)
	try(refc.Register(ctx, ref, model)).must(t)

	for round := 1; round <= 3; round++ {
		grads := make([]map[string]optimd.Tensor, 2)
		perName := map[string][][]float32{}
		for _, n := range names {
			perName[n] = gradsFor(rng, 2, 16)
		}
		mean := map[string]optimd.Tensor{}
		for _, n := range names {
			mean[n] = optimd.FromFloat32(rankOrderMean(perName[n]))
		}
		for w := range grads {
			grads[w] = map[string]optimd.Tensor{}
			for _, n := range names {
				grads[w][n] = optimd.FromFloat32(perName[n][w])
			}
		}
		results := make([]*optimd.ClusterStepResult, 2)
		errs := make([]error, 2)
		var wg sync.WaitGroup
		for w := range grads {
			wg.Add(1)
			go func(w int) {
				defer wg.Done()
				results[w], errs[w] = clusters[w].Step(ctx, s, grads[w], &optimd.StepOptions{Worker: []string{"a", "b"}[w]})
			}(w)
		}
		wg.Wait()
		want := try(refc.Step(ctx, ref, mean, nil)).must(t).Params
		for w, r := range results {
			if errs[w] != nil {
				t.Fatalf("round %d worker %d: %v", round, w, errs[w])
			}
			for _, u := range urls {
				if sr := r.Results[u]; sr.Combined != 2 || sr.Pushes != uint64(round) || sr.Steps != uint64(round) {
					t.Fatalf("round %d worker %d on %s: combined %d pushes %d steps %d", round, w, u,
						sr.Combined, sr.Pushes, sr.Steps)
				}
			}
			for _, n := range names {
				sameBits(t, fmt.Sprintf("round %d worker %d %s", round, w, n), f32s(t, r.Params, n),
					f32s(t, want, n))
			}
		}
	}
	left, err := clusters[1].Leave(ctx, s, "b")
	if err != nil {
		t.Fatal(err)
	}
	for _, u := range urls {
		if l := left[u]; l == nil || len(l.Workers.Members) != 1 {
			t.Fatalf("leave on %s: %+v", u, l)
		}
	}
}
