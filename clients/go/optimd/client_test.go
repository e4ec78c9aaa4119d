package optimd_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/optimd/optimd/clients/go/internal/daemontest"
	"github.com/optimd/optimd/clients/go/optimd"
)

// testCtx bounds every request of a test.
func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func connect(t *testing.T) (*optimd.Client, context.Context) {
	t.Helper()
	d := daemontest.Start(t)
	c, err := optimd.Dial(d.URL, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c, testCtx(t)
}

// outcome holds a call's results so that a test can write
// try(c.Op(...)).must(t).
type outcome[T any] struct {
	v   T
	err error
}

func try[T any](v T, err error) outcome[T] { return outcome[T]{v, err} }

func (o outcome[T]) must(t *testing.T) T {
	t.Helper()
	if o.err != nil {
		t.Fatal(o.err)
	}
	return o.v
}

// wantServerError checks that err is a ServerError with the given code,
// that it matches sentinel with errors.Is, and that it is not a protocol
// error.
func wantServerError(t *testing.T, err error, code optimd.Code, sentinel error) {
	t.Helper()
	var se *optimd.ServerError
	if !errors.As(err, &se) {
		t.Fatalf("got %v, want a server error %s", err, code)
	}
	if se.Code != code || se.Name != code.String() {
		t.Fatalf("got code %d %q, want %d %q (%v)", se.Code, se.Name, code, code.String(), err)
	}
	if !errors.Is(err, sentinel) {
		t.Fatalf("errors.Is(%v, %v) is false", err, sentinel)
	}
	if errors.Is(err, optimd.ErrProtocol) {
		t.Fatalf("a server error matches ErrProtocol")
	}
}

// adamwRef is torch's AdamW written from its documented formula, in
// float64, for one parameter. scale sums, over the steps so far, the
// magnitudes of the two terms each parameter update adds: an f32
// computation's rounding error is a few f32 epsilons of that, however
// much the terms cancel.
type adamwRef struct {
	lr, beta1, beta2, eps, wd float64
	p, m, v, scale            []float64
	t                         int
}

func (r *adamwRef) step(g []float64) {
	r.t++
	bc1 := 1 - math.Pow(r.beta1, float64(r.t))
	bc2 := 1 - math.Pow(r.beta2, float64(r.t))
	for i := range r.p {
		r.p[i] *= 1 - r.lr*r.wd
		r.m[i] = r.beta1*r.m[i] + (1-r.beta1)*g[i]
		r.v[i] = r.beta2*r.v[i] + (1-r.beta2)*g[i]*g[i]
		denom := math.Sqrt(r.v[i])/math.Sqrt(bc2) + r.eps
		update := r.lr / bc1 * r.m[i] / denom
		r.scale[i] += math.Abs(r.p[i]) + math.Abs(update)
		r.p[i] -= update
	}
}

// eps32 is the float32 machine epsilon, 2^-23.
const eps32 = 1.0 / (1 << 23)

// epsilon64 is the float64 machine epsilon, 2^-52.
const epsilon64 = 1.0 / (1 << 52)

func toF32(x []float64) []float32 {
	out := make([]float32, len(x))
	for i, v := range x {
		out[i] = float32(v)
	}
	return out
}

// TestEndToEnd: open, register, three AdamW steps checked against the
// formula, pull, a bad token refused, close.
func TestEndToEnd(t *testing.T) {
	c, ctx := connect(t)
	const lr, wd = 0.01, 0.1
	opened := try(c.Open(ctx, "e2e", "adamw", &optimd.OpenOptions{
		Hparams: optimd.Hparams{"lr": lr, "weight_decay": wd},
	})).must(t)
	s := opened.Session
	if s.Name != "e2e" || len(s.Token) != 32 || opened.LR != lr {
		t.Fatalf("open returned %+v", opened)
	}

	init := []float64{0.5, -1.25, 2.0, 0.0, -3.5, 0.0078125}
	ref32 := &adamwRef{lr: lr, beta1: 0.9, beta2: 0.999, eps: 1e-8, wd: wd,
		p: append([]float64(nil), init...), m: make([]float64, len(init)), v: make([]float64, len(init)),
		scale: make([]float64, len(init))}
	ref64 := *ref32
	ref64.p = append([]float64(nil), init...)
	ref64.m = make([]float64, len(init))
	ref64.v = make([]float64, len(init))
	ref64.scale = make([]float64, len(init))
	// f32 inputs must be exactly representable for the float64 reference
	// to start where the daemon does.
	for _, v := range init {
		if float64(float32(v)) != v {
			t.Fatalf("initial value %g is not an f32", v)
		}
	}
	n := try(c.Register(ctx, s, map[string]optimd.Tensor{
		"w":   optimd.FromFloat32(toF32(init), 2, 3),
		"w64": optimd.FromFloat64(init, 2, 3),
	})).must(t)
	if n != 2 {
		t.Fatalf("registered %d, want 2", n)
	}

	var last *optimd.StepResult
	for k := 1; k <= 3; k++ {
		g := make([]float64, len(init))
		for i := range g {
			// Exact in f32; signs and sizes vary by element and step.
			g[i] = float64(float32(float64(i+1)*0.25*float64(k) - 0.75))
		}
		res := try(c.Step(ctx, s, map[string]optimd.Tensor{
			"w":   optimd.FromFloat32(toF32(g), 2, 3),
			"w64": optimd.FromFloat64(g, 2, 3),
		}, nil)).must(t)
		ref32.step(g)
		ref64.step(g)
		if res.Steps != uint64(k) || res.Duplicate || res.LR != lr || res.NextLR != lr {
			t.Fatalf("step %d: %+v", k, res)
		}
		w := try(res.Params["w"].Float32s()).must(t)
		for i := range w {
			// The daemon rounds every operation to f32; the reference does
			// not round at all.
			if d := math.Abs(float64(w[i]) - ref32.p[i]); d > 2*eps32*ref32.scale[i] {
				t.Errorf("step %d: w[%d] = %.9g, reference %.9g (off by %.2g, %.2g eps32 of its scale)",
					k, i, w[i], ref32.p[i], d, d/eps32/ref32.scale[i])
			}
		}
		w64 := try(res.Params["w64"].Float64s()).must(t)
		for i := range w64 {
			if d := math.Abs(w64[i] - ref64.p[i]); d > 8*epsilon64*ref64.scale[i] {
				t.Errorf("step %d: w64[%d] = %.17g, reference %.17g", k, i, w64[i], ref64.p[i])
			}
		}
		if !slices.Equal(res.Params["w"].Shape, []uint64{2, 3}) {
			t.Errorf("step %d: shape %v", k, res.Params["w"].Shape)
		}
		last = res
	}

	// The optimizer state matches the reference's moments too.
	state := try(c.State(ctx, s, []string{"w64"})).must(t)
	m := try(state["w64"]["exp_avg"].Float64s()).must(t)
	v := try(state["w64"]["exp_avg_sq"].Float64s()).must(t)
	for i := range m {
		if math.Abs(m[i]-ref64.m[i]) > 1e-15 || math.Abs(v[i]-ref64.v[i]) > 1e-15 {
			t.Errorf("state[%d]: m %g v %g, reference m %g v %g", i, m[i], v[i], ref64.m[i], ref64.v[i])
		}
	}

	pulled := try(c.Pull(ctx, s, nil)).must(t)
	for _, name := range []string{"w", "w64"} {
		if !bytes.Equal(pulled[name].Data, last.Params[name].Data) {
			t.Errorf("pull %s differs from the last step's reply", name)
		}
	}

	bad := s
	bad.Token = "0123456789abcdef0123456789abcdef"
	_, err := c.Step(ctx, bad, map[string]optimd.Tensor{"w": optimd.FromFloat32(make([]float32, 6), 2, 3)}, nil)
	wantServerError(t, err, optimd.CodeBadToken, optimd.ErrBadToken)
	info := try(c.Info(ctx, s, "")).must(t)
	if info.Steps != 3 {
		t.Errorf("a refused step changed the step count to %d", info.Steps)
	}

	if err := c.CloseSession(ctx, s); err != nil {
		t.Fatal(err)
	}
	_, err = c.Info(ctx, s, "")
	wantServerError(t, err, optimd.CodeUnknownSession, optimd.ErrUnknownSession)
}

// TestOps runs every op not covered above at least once.
func TestOps(t *testing.T) {
	c, ctx := connect(t)

	hello := try(c.Hello(ctx, "go-test")).must(t)
	if hello.Server != "optimd" || hello.Protocol != optimd.ProtocolVersion || hello.MaxMessage == 0 || hello.Version == "" {
		t.Fatalf("hello: %+v", hello)
	}

	plugins := try(c.Plugins(ctx)).must(t)
	var adamw, step *optimd.PluginInfo
	for i := range plugins {
		switch plugins[i].ID {
		case "adamw":
			adamw = &plugins[i]
		case "step":
			step = &plugins[i]
		}
		if i > 0 && plugins[i-1].ID >= plugins[i].ID {
			t.Errorf("plugins not sorted by id: %q before %q", plugins[i-1].ID, plugins[i].ID)
		}
	}
	if adamw == nil || step == nil {
		t.Fatalf("plugins adamw and step not both listed: %+v", plugins)
	}
	if adamw.Kind != optimd.KindOptimizer || !slices.Contains(adamw.DTypes, optimd.F32) || len(adamw.Slots) == 0 {
		t.Errorf("adamw: %+v", adamw)
	}
	if step.Kind != optimd.KindScheduler || step.Slots != nil || step.DTypes != nil {
		t.Errorf("step scheduler: %+v", step)
	}
	lrDecl := slices.IndexFunc(adamw.Hparams, func(d optimd.HparamDecl) bool { return d.Key == "lr" })
	if lrDecl < 0 || adamw.Hparams[lrDecl].Type != "float" || !adamw.Hparams[lrDecl].Mutable {
		t.Errorf("adamw lr declaration: %+v", adamw.Hparams)
	}

	_, err := c.Open(ctx, "nope", "no_such_plugin", nil)
	wantServerError(t, err, optimd.CodeUnknownPlugin, optimd.ErrUnknownPlugin)

	// StepLR halves the lr every 2 steps.
	const lr = 0.1
	opened := try(c.Open(ctx, "ops", "sgd", &optimd.OpenOptions{
		Hparams:      optimd.Hparams{"lr": lr, "momentum": 0.5},
		Scheduler:    "step",
		SchedHparams: optimd.Hparams{"step_size": 2, "gamma": 0.5},
		Durability:   optimd.DurabilityAlways,
	})).must(t)
	s := opened.Session
	_, err = c.Open(ctx, "ops", "sgd", &optimd.OpenOptions{Hparams: optimd.Hparams{"lr": lr}})
	wantServerError(t, err, optimd.CodeSessionExists, optimd.ErrSessionExists)

	info := try(c.Attach(ctx, s)).must(t)
	if info.Session != "ops" || info.Optimizer != "sgd" || info.Scheduler != "step" ||
		info.Durability != optimd.DurabilityAlways || info.BaseLR != lr || info.LR != lr ||
		info.Hparams["momentum"] != 0.5 || info.SchedHparams["step_size"] != int64(2) ||
		info.ClientSeq != nil || info.Steps != 0 || len(info.Params) != 0 {
		t.Fatalf("attach: %+v", info)
	}

	if n := try(c.Register(ctx, s, map[string]optimd.Tensor{
		"a": optimd.FromFloat32([]float32{1, 2, 3}),
		"b": optimd.FromFloat64([]float64{4}, []uint64{}...),
	})).must(t); n != 2 {
		t.Fatalf("registered %d", n)
	}
	_, err = c.Register(ctx, s, map[string]optimd.Tensor{"a": optimd.FromFloat32([]float32{1})})
	wantServerError(t, err, optimd.CodeParamExists, optimd.ErrParamExists)
	_, err = c.Step(ctx, s, map[string]optimd.Tensor{"a": optimd.FromFloat32([]float32{1, 2})}, nil)
	wantServerError(t, err, optimd.CodeBadTensor, optimd.ErrBadTensor)
	_, err = c.SetHparams(ctx, s, optimd.Hparams{"nesterov": true})
	wantServerError(t, err, optimd.CodeNotMutable, optimd.ErrNotMutable)

	// A sequenced step, then its retry: applied once.
	grads := map[string]optimd.Tensor{"a": optimd.FromFloat32([]float32{1, -1, 0.5})}
	seq := &optimd.StepOptions{Seq: 1, Client: "w0"}
	first := try(c.Step(ctx, s, grads, seq)).must(t)
	if first.Duplicate || first.Steps != 1 || first.LR != lr || first.NextLR != lr {
		t.Fatalf("first step: %+v", first)
	}
	retry := try(c.Step(ctx, s, grads, seq)).must(t)
	if !retry.Duplicate || retry.Steps != 1 || retry.LR != first.LR || retry.NextLR != first.NextLR ||
		!bytes.Equal(retry.Params["a"].Data, first.Params["a"].Data) {
		t.Fatalf("retried step: %+v, first %+v", retry, first)
	}
	if info := try(c.Info(ctx, s, "w0")).must(t); info.ClientSeq == nil || *info.ClientSeq != 1 || info.Steps != 1 {
		t.Fatalf("info for client w0: %+v", info)
	}
	if info := try(c.Info(ctx, s, "w1")).must(t); info.ClientSeq == nil || *info.ClientSeq != 0 {
		t.Fatalf("info for client w1: %+v", info)
	}

	// Second step: the schedule halves the lr after it.
	second := try(c.Step(ctx, s, grads, &optimd.StepOptions{NoReturn: true, Seq: 2, Client: "w0"})).must(t)
	if second.Params != nil || second.Steps != 2 || second.LR != lr || second.NextLR != lr/2 {
		t.Fatalf("second step: %+v", second)
	}
	hp := try(c.Hparams(ctx, s)).must(t)
	if hp.LR != lr/2 || hp.BaseLR != lr || hp.Hparams["nesterov"] != false {
		t.Fatalf("hparams: %+v", hp)
	}
	hp = try(c.SetHparams(ctx, s, optimd.Hparams{"lr": 0.02, "momentum": 0.25})).must(t)
	if hp.LR != 0.02 || hp.BaseLR != lr || hp.Hparams["momentum"] != 0.25 {
		t.Fatalf("set_hparams: %+v", hp)
	}

	st := try(c.State(ctx, s, nil)).must(t)
	if len(st["a"]) == 0 || len(st["b"]) != 0 {
		t.Fatalf("state: a %v, b %v", st["a"], st["b"])
	}
	if buf, ok := st["a"]["momentum_buffer"]; !ok || buf.Validate() != nil || buf.Len() != 3 {
		t.Fatalf("state of a: %+v", st["a"])
	}
	some := try(c.Pull(ctx, s, []string{})).must(t)
	if len(some) != 0 {
		t.Fatalf("pull of no names: %v", some)
	}
	_, err = c.Pull(ctx, s, []string{"zz"})
	wantServerError(t, err, optimd.CodeUnknownParam, optimd.ErrUnknownParam)

	sessions := try(c.Sessions(ctx)).must(t)
	if len(sessions) != 1 || sessions[0] != (optimd.SessionSummary{
		Session: "ops", Optimizer: "sgd", Scheduler: "step", Params: 2, Steps: 2}) {
		t.Fatalf("sessions: %+v", sessions)
	}

	// Export, import under another name: same values, new token.
	snap := try(c.Export(ctx, s)).must(t)
	if len(snap) == 0 {
		t.Fatal("empty snapshot")
	}
	imported := try(c.Import(ctx, snap, &optimd.ImportOptions{Session: "ops-copy", Durability: optimd.DurabilityNone})).must(t)
	if imported.Name != "ops-copy" || imported.Steps != 2 || imported.Token == s.Token || len(imported.Token) != 32 {
		t.Fatalf("import: %+v", imported)
	}
	_, err = c.Import(ctx, snap, nil)
	wantServerError(t, err, optimd.CodeSessionExists, optimd.ErrSessionExists)
	_, err = c.Import(ctx, []byte("not a snapshot"), &optimd.ImportOptions{Session: "junk"})
	wantServerError(t, err, optimd.CodeBadRequest, optimd.ErrBadRequest)
	orig := try(c.Pull(ctx, s, nil)).must(t)
	copied := try(c.Pull(ctx, imported.Session, nil)).must(t)
	for _, name := range []string{"a", "b"} {
		if !bytes.Equal(orig[name].Data, copied[name].Data) || !slices.Equal(orig[name].Shape, copied[name].Shape) {
			t.Errorf("imported %s differs", name)
		}
	}
	if ci := try(c.Info(ctx, imported.Session, "w0")).must(t); *ci.ClientSeq != 2 || ci.Durability != optimd.DurabilityNone || ci.LR != 0.02 {
		t.Errorf("imported info: %+v", ci)
	}
	// The copy keeps the sequence records: the old retry is still a duplicate.
	if dup := try(c.Step(ctx, imported.Session, grads, seq)).must(t); !dup.Duplicate {
		t.Errorf("retry on the imported copy applied again: %+v", dup)
	}

	for _, sess := range []optimd.Session{s, imported.Session} {
		if err := c.CloseSession(ctx, sess); err != nil {
			t.Fatal(err)
		}
	}
	if sessions := try(c.Sessions(ctx)).must(t); len(sessions) != 0 {
		t.Fatalf("sessions after close: %+v", sessions)
	}
}

// TestConcurrent: requests from several goroutines on one Client are
// answered each with its own reply.
func TestConcurrent(t *testing.T) {
	c, ctx := connect(t)
	const workers = 8
	errs := make(chan error, workers)
	for i := 0; i < workers; i++ {
		go func(i int) {
			name := "conc" + string(rune('a'+i))
			o, err := c.Open(ctx, name, "sgd", &optimd.OpenOptions{Hparams: optimd.Hparams{"lr": 1}})
			if err == nil {
				_, err = c.Register(ctx, o.Session, map[string]optimd.Tensor{"x": optimd.FromFloat64([]float64{float64(i)})})
			}
			if err == nil {
				var r *optimd.StepResult
				r, err = c.Step(ctx, o.Session, map[string]optimd.Tensor{"x": optimd.FromFloat64([]float64{1})}, nil)
				if err == nil {
					if x, _ := r.Params["x"].Float64s(); x[0] != float64(i)-1 {
						err = errors.New(name + ": wrong value")
					}
				}
			}
			errs <- err
		}(i)
	}
	for i := 0; i < workers; i++ {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
}

// TestContextCancel: a request to a daemon that is not there ends when its
// context does, with the context's error.
func TestContextCancel(t *testing.T) {
	c, err := optimd.Dial("tcp://127.0.0.1:1", &optimd.Options{DialAsync: true})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	_, err = c.Hello(ctx, "")
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("got %v, want a deadline error", err)
	}
	ctx, cancel = context.WithCancel(context.Background())
	cancel()
	if _, err = c.Hello(ctx, ""); !errors.Is(err, context.Canceled) {
		t.Fatalf("got %v, want context.Canceled", err)
	}
	if _, err := optimd.Dial("tcp://127.0.0.1:1", nil); err == nil {
		t.Fatal("a synchronous dial to a closed port succeeded")
	}
}

// TestLargeTensor: replies above mangos' default 1 MiB receive limit
// arrive (the client lifts it).
func TestLargeTensor(t *testing.T) {
	c, ctx := connect(t)
	const n = 1 << 20 // 4 MiB of f32
	values := make([]float32, n)
	for i := range values {
		values[i] = float32(i % 1000)
	}
	o := try(c.Open(ctx, "big", "sgd", &optimd.OpenOptions{Hparams: optimd.Hparams{"lr": 0.5}})).must(t)
	try(c.Register(ctx, o.Session, map[string]optimd.Tensor{"w": optimd.FromFloat32(values, 1024, 1024)})).must(t)
	grad := make([]float32, n)
	for i := range grad {
		grad[i] = 2
	}
	res := try(c.Step(ctx, o.Session, map[string]optimd.Tensor{"w": optimd.FromFloat32(grad, 1024, 1024)}, nil)).must(t)
	w := try(res.Params["w"].Float32s()).must(t)
	pulled := try(c.Pull(ctx, o.Session, nil)).must(t)
	if len(w) != n || !bytes.Equal(pulled["w"].Data, res.Params["w"].Data) {
		t.Fatalf("got %d elements", len(w))
	}
	for i, v := range w {
		if v != values[i]-1 {
			t.Fatalf("w[%d] = %g, want %g", i, v, values[i]-1)
		}
	}
}

// scrapeCounter reads one unlabelled sample from the daemon's metrics
// endpoint (the URL its log names).
func scrapeCounter(t *testing.T, d *daemontest.Daemon, name string) float64 {
	t.Helper()
	re := regexp.MustCompile(`metrics on (http://\S+/metrics)`)
	var url string
	for deadline := time.Now().Add(10 * time.Second); url == "" && time.Now().Before(deadline); {
		if m := re.FindStringSubmatch(d.Log()); m != nil {
			url = m[1]
		} else {
			time.Sleep(20 * time.Millisecond)
		}
	}
	if url == "" {
		t.Fatalf("no metrics address in the daemon's log:\n%s", d.Log())
	}
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(body), "\n") {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			if err != nil {
				t.Fatalf("%s: %v", line, err)
			}
			return f
		}
	}
	t.Fatalf("no %s in the metrics:\n%s", name, body)
	return 0
}

// TestLargeTensorsAligned: steps with several large tensors (f32 and f64,
// of sizes that shift each other's offsets), then with small ones beside
// them, sent with client ids of 16 lengths so that every pad length comes
// up, give the exact SGD result; and the daemon copies none of the large
// gradients to align them (optimd_unaligned_gradients_total stays 0 while
// only large ones are sent: a small one is sent as it comes).
func TestLargeTensorsAligned(t *testing.T) {
	d := daemontest.Start(t, "--metrics-listen", "127.0.0.1:0")
	c, err := optimd.Dial(d.URL, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	ctx := testCtx(t)

	large := map[string]int{"a": 1<<14 + 1, "c": 100003, "e": 1 << 16}
	mixed := map[string]int{"a": 1<<14 + 1, "b": 3, "c": 100003, "d": 1<<14 - 1, "e": 1 << 16}
	f64 := map[string]bool{"c": true}
	initial := func(i int) float64 { return float64(i%1000) - 500 }
	grad := func(k int) func(i int) float64 {
		return func(i int) float64 { return float64((i+k)%7) - 3 }
	}
	for _, sizes := range []map[string]int{large, mixed} {
		mk := func(name string, f func(i int) float64) optimd.Tensor {
			v := make([]float64, sizes[name])
			for i := range v {
				v[i] = f(i)
			}
			if f64[name] {
				return optimd.FromFloat64(v)
			}
			return optimd.FromFloat32(toF32(v))
		}
		o := try(c.Open(ctx, fmt.Sprintf("aligned%d", len(sizes)), "sgd",
			&optimd.OpenOptions{Hparams: optimd.Hparams{"lr": 0.5}})).must(t)
		params := map[string]optimd.Tensor{}
		want := map[string][]float64{}
		for name := range sizes {
			params[name] = mk(name, initial)
			want[name] = try(params[name].Float64s()).must(t)
		}
		try(c.Register(ctx, o.Session, params)).must(t)
		for k := 1; k <= 16; k++ {
			grads := map[string]optimd.Tensor{}
			for name := range sizes {
				grads[name] = mk(name, grad(k))
			}
			res := try(c.Step(ctx, o.Session, grads, &optimd.StepOptions{Seq: 1, Client: strings.Repeat("w", k)})).must(t)
			if res.Duplicate || res.Steps != uint64(k) {
				t.Fatalf("step %d: %+v", k, res)
			}
			for name, w := range want {
				for i := range w {
					w[i] -= 0.5 * grad(k)(i)
				}
				got := try(res.Params[name].Float64s()).must(t)
				if !slices.Equal(got, w) {
					t.Fatalf("step %d: %s differs from the SGD result", k, name)
				}
			}
		}
		if len(sizes) == len(large) {
			if n := scrapeCounter(t, d, "optimd_unaligned_gradients_total"); n != 0 {
				t.Errorf("the daemon copied %g large gradients to align them", n)
			}
		}
	}
}
