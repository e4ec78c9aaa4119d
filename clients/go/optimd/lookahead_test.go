package optimd_test

import (
	"math"
	"testing"

	"github.com/optimd/optimd/clients/go/optimd"
)

// TestLookaheadSequential opens a session with Lookahead and a sequential
// schedule (linear, then exponential from epoch 3) and checks what info
// reports and the lr of every step against torch's rules computed here;
// then, in a session with a fixed lr, that the k-th step pulls the
// parameter back towards its slow weights.
func TestLookaheadSequential(t *testing.T) {
	c, ctx := connect(t)
	const (
		baseLR      = 0.1
		startFactor = 0.1
		endFactor   = 1.0 // LinearLR's default
		totalIters  = 3
		gamma       = 0.5
		milestone   = 3
		k           = 2
		alpha       = 0.5
	)
	la := &optimd.Lookahead{K: k, Alpha: alpha}
	opened := try(c.Open(ctx, "lookahead-seq", "sgd", &optimd.OpenOptions{
		Hparams:   optimd.Hparams{"lr": baseLR},
		Lookahead: la,
		Scheduler: optimd.SchedulerSequential,
		Schedulers: []optimd.SchedulerSpec{
			{Scheduler: "linear", SchedHparams: optimd.Hparams{"start_factor": startFactor, "total_iters": totalIters}},
			{Scheduler: "exponential", SchedHparams: optimd.Hparams{"gamma": gamma}},
		},
		Milestones: []int{milestone},
	})).must(t)
	s := opened.Session

	info := try(c.Info(ctx, s, "")).must(t)
	if info.Lookahead == nil || *info.Lookahead != *la {
		t.Fatalf("info lookahead %+v, want %+v", info.Lookahead, la)
	}
	if info.Scheduler != optimd.SchedulerSequential || len(info.Milestones) != 1 || info.Milestones[0] != milestone {
		t.Fatalf("info scheduler %q milestones %v", info.Scheduler, info.Milestones)
	}
	if len(info.Schedulers) != 2 || info.Schedulers[0].Scheduler != "linear" || info.Schedulers[1].Scheduler != "exponential" ||
		info.Schedulers[0].SchedHparams["start_factor"] != startFactor || info.Schedulers[1].SchedHparams["gamma"] != gamma {
		t.Fatalf("info schedulers %+v", info.Schedulers)
	}
	def := info.Group(optimd.DefaultGroup)
	if def == nil || def.Scheduler != optimd.SchedulerSequential || len(def.Schedulers) != 2 || len(def.Milestones) != 1 {
		t.Fatalf("default group %+v", def)
	}

	// torch 1.13: LinearLR starts at base*start_factor and multiplies by
	// 1 + (end-start)/(total*start + (e-1)*(end-start)) at epoch e; at the
	// milestone SequentialLR restarts ExponentialLR at its epoch 0 (the
	// base lr), which then multiplies by gamma every epoch.
	want := make([]float64, 5)
	for e := range want {
		switch {
		case e == 0:
			want[e] = baseLR * startFactor
		case e < milestone:
			want[e] = want[e-1] * (1 + (endFactor-startFactor)/
				(totalIters*startFactor+float64(e-1)*(endFactor-startFactor)))
		case e == milestone:
			want[e] = baseLR
		default:
			want[e] = want[e-1] * gamma
		}
	}
	if math.Abs(opened.LR-want[0]) > 1e-12 {
		t.Fatalf("open lr %v, want %v", opened.LR, want[0])
	}
	try(c.Register(ctx, s, map[string]optimd.Tensor{"w": optimd.FromFloat64([]float64{1})})).must(t)
	for i, w := range want {
		res := try(c.Step(ctx, s, map[string]optimd.Tensor{"w": optimd.FromFloat64([]float64{1})},
			&optimd.StepOptions{NoReturn: true})).must(t)
		if math.Abs(res.LR-w) > 1e-12*w {
			t.Fatalf("step %d used lr %.17g, want %.17g (all: %v)", i+1, res.LR, w, want)
		}
	}

	// Plain SGD, fixed lr: after k steps the parameter is
	// slow + alpha*(fast - slow), slow being its value before step 1.
	const lr = 0.25
	s2 := try(c.Open(ctx, "lookahead-sgd", "sgd", &optimd.OpenOptions{
		Hparams: optimd.Hparams{"lr": lr}, Lookahead: la,
	})).must(t).Session
	p0 := []float64{1.5, -2}
	grads := [][]float64{{1, 3}, {-0.5, 2}}
	try(c.Register(ctx, s2, map[string]optimd.Tensor{"p": optimd.FromFloat64(p0)})).must(t)
	fast := append([]float64(nil), p0...)
	var got []float64
	for step, g := range grads {
		for i := range fast {
			fast[i] -= lr * g[i]
		}
		res := try(c.Step(ctx, s2, map[string]optimd.Tensor{"p": optimd.FromFloat64(g)}, nil)).must(t)
		var err error
		if got, err = res.Params["p"].Float64s(); err != nil {
			t.Fatal(err)
		}
		if step == 0 {
			nearF64(t, "p after step 1 (no sync yet)", got, fast)
		}
	}
	want2 := make([]float64, len(p0))
	for i := range p0 {
		want2[i] = p0[i] + alpha*(fast[i]-p0[i])
	}
	nearF64(t, "p after k steps", got, want2)
	st := try(c.State(ctx, s2, []string{"p"})).must(t)
	slow, ok := st["p"]["lookahead_slow"]
	if !ok {
		t.Fatalf("state of p has no lookahead_slow: %v", st["p"])
	}
	sv, err := slow.Float64s()
	if err != nil {
		t.Fatal(err)
	}
	nearF64(t, "lookahead_slow after sync", sv, want2)
}

func nearF64(t *testing.T, what string, got, want []float64) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%s: %d values, want %d", what, len(got), len(want))
	}
	for i := range want {
		if math.Abs(got[i]-want[i]) > 1e-12*math.Max(1, math.Abs(want[i])) {
			t.Fatalf("%s = %v, want %v", what, got, want)
		}
	}
}
