package optimd_test

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vmihailenco/msgpack/v5"
	"go.nanomsg.org/mangos/v3"
	"go.nanomsg.org/mangos/v3/protocol/rep"

	"github.com/optimd/optimd/clients/go/internal/daemontest"
	"github.com/optimd/optimd/clients/go/optimd"
)

// Sliced steps (protocol.md, step, "Sliced steps"): Step with
// StepOptions.PartElements, StepPart, AbandonStep and info's pending_step,
// against the real daemon; the pipelining against a fake REP server.

// slicedShapes are the parameters of the sliced tests: 1-D, 2-D, a small
// one (whole in most parts), 3-D. In name order (the order SliceGrads
// takes them): b (5), w1 (37), w2 (143), w3 (105); 290 elements.
var slicedShapes = map[string][]uint64{
	"w1": {37},
	"w2": {13, 11},
	"b":  {5},
	"w3": {3, 5, 7},
}

// slicedPartSizes are the cut sizes, one per step: odd sizes that cut the
// tensors in odd places, 1 (every element its own part), one larger than
// everything (one part).
var slicedPartSizes = []int{17, 5, 1, 64, 3, 1000, 29}

// randTensors returns a normally distributed tensor of dtype for each
// shape, the same for the same seed.
func randTensors(dtype optimd.DType, seed int64, shapes map[string][]uint64) map[string]optimd.Tensor {
	rng := rand.New(rand.NewSource(seed))
	names := make([]string, 0, len(shapes))
	for name := range shapes {
		names = append(names, name)
	}
	sort.Strings(names)
	out := map[string]optimd.Tensor{}
	for _, name := range names {
		n, _ := optimd.NumElements(shapes[name])
		v := make([]float64, n)
		for i := range v {
			v[i] = rng.NormFloat64()
		}
		if dtype == optimd.F32 {
			out[name] = optimd.FromFloat32(toF32(v), shapes[name]...)
		} else {
			out[name] = optimd.FromFloat64(v, shapes[name]...)
		}
	}
	return out
}

// sameTensors fails unless got and want hold the same names, each with the
// same dtype, shape and bytes.
func sameTensors(t *testing.T, what string, got, want map[string]optimd.Tensor) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%s: %d tensors, want %d", what, len(got), len(want))
	}
	for name, w := range want {
		g, ok := got[name]
		if !ok {
			t.Fatalf("%s: %q missing", what, name)
		}
		if g.DType != w.DType || !slices.Equal(g.Shape, w.Shape) || !bytes.Equal(g.Data, w.Data) {
			t.Fatalf("%s: %q differs: %s %v, want %s %v (bytes equal: %v)", what, name, g.DType, g.Shape,
				w.DType, w.Shape, bytes.Equal(g.Data, w.Data))
		}
	}
}

// sameSession fails unless sessions a and b have bit-identical parameters
// and state (every slot), the same step counts (per parameter too) and lr.
func sameSession(t *testing.T, c *optimd.Client, a, b optimd.Session, when string) {
	t.Helper()
	ctx := testCtx(t)
	sameTensors(t, "parameters"+when, try(c.Pull(ctx, a, nil)).must(t), try(c.Pull(ctx, b, nil)).must(t))
	sa, sb := try(c.State(ctx, a, nil)).must(t), try(c.State(ctx, b, nil)).must(t)
	if len(sa) != len(sb) {
		t.Fatalf("state%s: %d parameters, want %d", when, len(sa), len(sb))
	}
	for name, slots := range sb {
		sameTensors(t, fmt.Sprintf("state of %q%s", name, when), sa[name], slots)
	}
	ia, ib := try(c.Info(ctx, a, "")).must(t), try(c.Info(ctx, b, "")).must(t)
	if ia.Steps != ib.Steps || ia.LR != ib.LR {
		t.Fatalf("steps, lr%s: %d %g, want %d %g", when, ia.Steps, ia.LR, ib.Steps, ib.LR)
	}
	for i, p := range ib.Params {
		if ia.Params[i].Name != p.Name || ia.Params[i].Steps != p.Steps {
			t.Fatalf("parameter steps%s: %+v, want %+v", when, ia.Params[i], p)
		}
	}
}

// openPair opens two sessions of optimizer with the same options and
// parameters: one to step whole, one to step in parts.
func openPair(t *testing.T, c *optimd.Client, name, optimizer string, opts *optimd.OpenOptions,
	params map[string]optimd.Tensor) (whole, sliced optimd.Session) {
	t.Helper()
	ctx := testCtx(t)
	whole = try(c.Open(ctx, name+"-whole", optimizer, opts)).must(t).Session
	sliced = try(c.Open(ctx, name+"-sliced", optimizer, opts)).must(t).Session
	try(c.Register(ctx, whole, params)).must(t)
	try(c.Register(ctx, sliced, params)).must(t)
	return whole, sliced
}

// TestSlicedStepsBitIdentical: adamw (with an exponential schedule) and
// nadam (a per-parameter scalar state slot), f32 and f64: a session
// stepped in parts of odd sizes, with 1 to 3 (and the default) parts in
// flight, ends every step bit-identical to a twin stepped whole (the
// step's result, then parameters, every state slot, step counts and lr);
// a resent sliced step is a duplicate with the same values.
func TestSlicedStepsBitIdentical(t *testing.T) {
	c, ctx := connect(t)
	plugins := try(c.Plugins(ctx)).must(t)
	for _, p := range plugins {
		if (p.ID == "adamw" || p.ID == "nadam") && (p.Sliced == nil || !*p.Sliced) {
			t.Fatalf("plugins: %s does not say it takes sliced steps", p.ID)
		}
	}
	cases := []struct {
		optimizer string
		opts      optimd.OpenOptions
	}{
		{"adamw", optimd.OpenOptions{Hparams: optimd.Hparams{"lr": 1e-2, "weight_decay": 0.1},
			Scheduler: "exponential", SchedHparams: optimd.Hparams{"gamma": 0.9}}},
		{"nadam", optimd.OpenOptions{Hparams: optimd.Hparams{"lr": 1e-2}}},
	}
	for _, tc := range cases {
		for _, dtype := range []optimd.DType{optimd.F32, optimd.F64} {
			t.Run(fmt.Sprintf("%s-%s", tc.optimizer, dtype), func(t *testing.T) {
				opts := tc.opts
				whole, sliced := openPair(t, c, fmt.Sprintf("%s-%s", tc.optimizer, dtype), tc.optimizer, &opts,
					randTensors(dtype, 1, slicedShapes))
				for step, size := range slicedPartSizes {
					g := randTensors(dtype, int64(100+step), slicedShapes)
					want := try(c.Step(ctx, whole, g, nil)).must(t)
					got := try(c.Step(ctx, sliced, g, &optimd.StepOptions{Seq: uint64(step + 1), Client: "trainer",
						PartElements: size, PartsInFlight: step % 4})).must(t)
					when := fmt.Sprintf(" after step %d (parts of %d)", step+1, size)
					sameTensors(t, "step result"+when, got.Params, want.Params)
					if got.Steps != want.Steps || got.LR != want.LR || got.NextLR != want.NextLR || got.Duplicate {
						t.Fatalf("counters%s: %+v, want %+v", when, got, want)
					}
					if ps := try(c.Info(ctx, sliced, "")).must(t).PendingStep; ps != nil {
						t.Fatalf("pending step%s: %+v", when, *ps)
					}
				}
				sameSession(t, c, sliced, whole, "")
				if tc.optimizer == "nadam" {
					// The per-parameter scalar slot was compared too.
					scalar := false
					for _, slot := range try(c.State(ctx, sliced, []string{"w2"})).must(t)["w2"] {
						scalar = scalar || len(slot.Shape) == 0
					}
					if !scalar {
						t.Fatal("nadam's state has no scalar slot")
					}
				}
				info := try(c.Info(ctx, sliced, "trainer")).must(t)
				if info.ClientSeq == nil || *info.ClientSeq != uint64(len(slicedPartSizes)) {
					t.Fatalf("client_seq %v, want %d", info.ClientSeq, len(slicedPartSizes))
				}
				// The last step again (a retry after a lost reply): every
				// part a duplicate, the current values.
				last := len(slicedPartSizes) - 1
				g := randTensors(dtype, int64(100+last), slicedShapes)
				again := try(c.Step(ctx, sliced, g, &optimd.StepOptions{Seq: uint64(last + 1), Client: "trainer",
					PartElements: slicedPartSizes[last]})).must(t)
				if !again.Duplicate || again.Steps != uint64(len(slicedPartSizes)) {
					t.Fatalf("resent step: %+v", again)
				}
				sameTensors(t, "resent step", again.Params, try(c.Pull(ctx, whole, nil)).must(t))
				sameSession(t, c, sliced, whole, " after the resent step")
			})
		}
	}
}

// TestSliceGrads: the cut SliceGrads makes of the test parameters in
// parts of 80: names in order, whole tensors where they fit, ranges
// sharing the gradients' bytes where a cut crosses.
func TestSliceGrads(t *testing.T) {
	g := randTensors(optimd.F32, 7, slicedShapes)
	parts := try(optimd.SliceGrads(g, 80)).must(t)
	type cut struct {
		name     string
		offset   uint64
		n        int
		wholeOne bool
	}
	want := [][]cut{
		{{"b", 0, 5, true}, {"w1", 0, 37, true}, {"w2", 0, 38, false}},
		{{"w2", 38, 80, false}},
		{{"w2", 118, 25, false}, {"w3", 0, 55, false}},
		{{"w3", 55, 50, false}},
	}
	if len(parts) != len(want) {
		t.Fatalf("%d parts, want %d", len(parts), len(want))
	}
	for i, p := range parts {
		if p.Index != i || p.Count != len(want) || len(p.Grads)+len(p.Ranges) != len(want[i]) {
			t.Fatalf("part %d: index %d count %d, %d whole, %d ranges", i, p.Index, p.Count, len(p.Grads), len(p.Ranges))
		}
		for _, w := range want[i] {
			if w.wholeOne {
				if !bytes.Equal(p.Grads[w.name].Data, g[w.name].Data) {
					t.Fatalf("part %d: %s is not whole", i, w.name)
				}
				continue
			}
			r, ok := p.Ranges[w.name]
			if !ok || r.Offset != w.offset || !slices.Equal(r.Values.Shape, []uint64{uint64(w.n)}) ||
				r.Values.DType != optimd.F32 || &r.Values.Data[0] != &g[w.name].Data[4*w.offset] {
				t.Fatalf("part %d: %s: %+v, want %d elements at %d, a view of the gradient", i, w.name, r.Values.Shape, w.n, w.offset)
			}
		}
	}
	// No gradients: one empty part; a bad size refused.
	if p := try(optimd.SliceGrads(nil, 3)).must(t); len(p) != 1 || p[0].Count != 1 || len(p[0].Grads)+len(p[0].Ranges) != 0 {
		t.Fatalf("no gradients: %+v", p)
	}
	if _, err := optimd.SliceGrads(g, 0); err == nil {
		t.Fatal("SliceGrads with 0 elements a part: no error")
	}
	// At most MaxParts parts: 2 × MaxParts + 3 elements in parts of 1
	// become parts of 3.
	n := 2*optimd.MaxParts + 3
	big := map[string]optimd.Tensor{"x": optimd.FromFloat32(make([]float32, n))}
	if p := try(optimd.SliceGrads(big, 1)).must(t); len(p) != (n+2)/3 || p[0].Ranges["x"].Values.Len() != 3 {
		t.Fatalf("%d elements in parts of 1: %d parts", n, len(p))
	}
}

// TestSlicedPartsOutOfOrder: the parts of a step sent by StepPart in the
// order 2, 0, 3, 1: the step counts only at the last; meanwhile info shows
// the pending step; each reply holds the final values of exactly the
// elements its part carried; the session ends as the whole-stepped twin.
func TestSlicedPartsOutOfOrder(t *testing.T) {
	c, ctx := connect(t)
	whole, sliced := openPair(t, c, "order", "adamw", &optimd.OpenOptions{Hparams: optimd.Hparams{"lr": 1e-2}},
		randTensors(optimd.F32, 1, slicedShapes))
	g := randTensors(optimd.F32, 100, slicedShapes)
	want := try(c.Step(ctx, whole, g, nil)).must(t)
	parts := try(optimd.SliceGrads(g, 80)).must(t)
	if len(parts) != 4 {
		t.Fatalf("%d parts", len(parts))
	}
	order := []int{2, 0, 3, 1}
	opts := &optimd.StepOptions{Seq: 1, Client: "x"}
	for k, index := range order {
		r := try(c.StepPart(ctx, sliced, parts[index], opts)).must(t)
		last := k == len(order)-1
		if r.Complete != last || r.Parts != uint64(k+1) || r.Duplicate {
			t.Fatalf("part %d: complete %v parts %d duplicate %v", index, r.Complete, r.Parts, r.Duplicate)
		}
		if !last {
			if r.Steps != 0 || r.NextLR != r.LR {
				t.Fatalf("part %d: steps %d lr %g next_lr %g", index, r.Steps, r.LR, r.NextLR)
			}
			info := try(c.Info(ctx, sliced, "")).must(t)
			wantPending := optimd.PendingStep{Client: "x", Seq: 1, Count: 4, Applied: uint64(k + 1)}
			if info.Steps != 0 || info.PendingStep == nil || *info.PendingStep != wantPending {
				t.Fatalf("after part %d: steps %d, pending %+v, want %+v", index, info.Steps, info.PendingStep, wantPending)
			}
		} else if r.Steps != 1 || r.NextLR != want.NextLR {
			t.Fatalf("last part: steps %d next_lr %g", r.Steps, r.NextLR)
		}
		if len(r.Params) != len(parts[index].Grads)+len(parts[index].Ranges) {
			t.Fatalf("part %d: %d parameters in the reply", index, len(r.Params))
		}
		for name, got := range r.Params {
			offset, n := uint64(0), 0
			if whole, ok := parts[index].Grads[name]; ok {
				n = whole.Len()
			} else if rg, ok := parts[index].Ranges[name]; ok {
				offset, n = rg.Offset, rg.Values.Len()
			} else {
				t.Fatalf("part %d: reply names %q, not sent", index, name)
			}
			w := want.Params[name].Data[4*offset : 4*(offset+uint64(n))]
			if got.Offset != offset || !bytes.Equal(got.Values.Data, w) {
				t.Fatalf("part %d: %s at %d (%d bytes), want the whole step's %d bytes at %d", index, name,
					got.Offset, len(got.Values.Data), len(w), offset)
			}
		}
	}
	if ps := try(c.Info(ctx, sliced, "")).must(t).PendingStep; ps != nil {
		t.Fatalf("pending step after the last part: %+v", *ps)
	}
	sameSession(t, c, sliced, whole, "")

	// A part of the complete step again: a duplicate, nothing applied.
	dup := try(c.StepPart(ctx, sliced, parts[1], opts)).must(t)
	if !dup.Duplicate || !dup.Complete {
		t.Fatalf("part 1 again: %+v", dup)
	}
	sameSession(t, c, sliced, whole, " after a duplicate part")
	// A name in both Grads and Ranges is refused before sending.
	both := optimd.StepPart{Count: 1, Grads: map[string]optimd.Tensor{"b": g["b"]},
		Ranges: map[string]optimd.Range{"b": {Values: g["b"]}}}
	if _, err := c.StepPart(ctx, sliced, both, &optimd.StepOptions{Seq: 9}); err == nil {
		t.Fatal("a part naming b twice: no error")
	}
}

// TestSlicedStepPending: while a sliced step is pending, another step (plain
// or sliced), set_hparams and a part of another step are refused with
// STEP_PENDING; Step with the same seq completes it (the applied parts
// duplicates) as the whole step would; a second pending step ended with
// AbandonStep counts as a step and is gone from info.
func TestSlicedStepPending(t *testing.T) {
	c, ctx := connect(t)
	whole, sliced := openPair(t, c, "pending", "adamw", &optimd.OpenOptions{Hparams: optimd.Hparams{"lr": 1e-2}},
		randTensors(optimd.F64, 1, slicedShapes))
	g := randTensors(optimd.F64, 100, slicedShapes)
	want := try(c.Step(ctx, whole, g, nil)).must(t)
	parts := try(optimd.SliceGrads(g, 80)).must(t)
	opts := &optimd.StepOptions{Seq: 5, Client: "p", PartElements: 80}
	try(c.StepPart(ctx, sliced, parts[0], opts)).must(t)
	try(c.StepPart(ctx, sliced, parts[2], opts)).must(t)

	refused := map[string]error{}
	_, refused["plain step"] = c.Step(ctx, sliced, g, nil)
	_, refused["sliced step of another seq"] = c.Step(ctx, sliced, g, &optimd.StepOptions{Seq: 6, Client: "p", PartElements: 50})
	_, refused["part of another client"] = c.StepPart(ctx, sliced, parts[1], &optimd.StepOptions{Seq: 5, Client: "q"})
	_, refused["set_hparams"] = c.SetHparams(ctx, sliced, optimd.Hparams{"lr": 0.5})
	for what, err := range refused {
		t.Run(what, func(t *testing.T) {
			wantServerError(t, err, optimd.CodeStepPending, optimd.ErrStepPending)
		})
	}
	info := try(c.Info(ctx, sliced, "")).must(t)
	wantPending := optimd.PendingStep{Client: "p", Seq: 5, Count: 4, Applied: 2}
	if info.Steps != 0 || info.PendingStep == nil || *info.PendingStep != wantPending {
		t.Fatalf("pending %+v (steps %d), want %+v", info.PendingStep, info.Steps, wantPending)
	}

	// The step sent again whole with the same seq completes it.
	got := try(c.Step(ctx, sliced, g, opts)).must(t)
	if got.Duplicate || got.Steps != 1 || got.NextLR != want.NextLR {
		t.Fatalf("completing step: %+v", got)
	}
	sameTensors(t, "completed step", got.Params, want.Params)
	sameSession(t, c, sliced, whole, "")

	// A second step: one part in, then abandoned.
	g2 := randTensors(optimd.F64, 101, slicedShapes)
	parts2 := try(optimd.SliceGrads(g2, 80)).must(t)
	opts2 := &optimd.StepOptions{Seq: 6, Client: "p"}
	try(c.StepPart(ctx, sliced, parts2[1], opts2)).must(t) // w2[38:118]
	if _, err := c.AbandonStep(ctx, sliced, 7, "p"); !errors.Is(err, optimd.ErrBadRequest) {
		t.Fatalf("abandoning another seq: %v, want BAD_REQUEST", err)
	}
	ab := try(c.AbandonStep(ctx, sliced, 6, "p")).must(t)
	if ab.Steps != 2 || ab.Parts != 1 || ab.Duplicate {
		t.Fatalf("abandon_step: %+v", ab)
	}
	info = try(c.Info(ctx, sliced, "p")).must(t)
	if info.PendingStep != nil || info.Steps != 2 || info.ClientSeq == nil || *info.ClientSeq != 6 {
		t.Fatalf("after abandon_step: pending %+v, steps %d, client_seq %v", info.PendingStep, info.Steps, info.ClientSeq)
	}
	for _, p := range info.Params {
		wantSteps := uint64(1)
		if p.Name == "w2" { // the only parameter the abandoned step touched
			wantSteps = 2
		}
		if p.Steps != wantSteps {
			t.Fatalf("parameter %s: %d steps, want %d", p.Name, p.Steps, wantSteps)
		}
	}
	// Its other parts are duplicates now; nothing is pending.
	if r := try(c.StepPart(ctx, sliced, parts2[0], opts2)).must(t); !r.Duplicate {
		t.Fatalf("a part of the abandoned step: %+v", r)
	}
	if _, err := c.AbandonStep(ctx, sliced, 6, "p"); !errors.Is(err, optimd.ErrBadRequest) {
		t.Fatalf("abandoning with nothing pending: %v, want BAD_REQUEST", err)
	}
	if r := try(c.Step(ctx, sliced, g2, nil)).must(t); r.Steps != 3 {
		t.Fatalf("a plain step after abandon_step: steps %d", r.Steps)
	}
}

// TestSlicedStepRefused: lamb (not element-wise) refuses a sliced step and
// a part with BAD_REQUEST, changing nothing; the client's own checks (no
// Seq, ClipNorm, Worker, bad sizes) send nothing.
func TestSlicedStepRefused(t *testing.T) {
	c, ctx := connect(t)
	for _, p := range try(c.Plugins(ctx)).must(t) {
		if p.ID == "lamb" && (p.Sliced == nil || *p.Sliced) {
			t.Fatalf("plugins: lamb says sliced %v", p.Sliced)
		}
	}
	start := randTensors(optimd.F32, 1, slicedShapes)
	s := try(c.Open(ctx, "lamb", "lamb", &optimd.OpenOptions{Hparams: optimd.Hparams{"lr": 1e-3}})).must(t).Session
	try(c.Register(ctx, s, start)).must(t)
	g := randTensors(optimd.F32, 100, slicedShapes)
	_, err := c.Step(ctx, s, g, &optimd.StepOptions{Seq: 1, PartElements: 50})
	wantServerError(t, err, optimd.CodeBadRequest, optimd.ErrBadRequest)
	_, err = c.StepPart(ctx, s, optimd.StepPart{Count: 1, Grads: g}, &optimd.StepOptions{Seq: 1})
	wantServerError(t, err, optimd.CodeBadRequest, optimd.ErrBadRequest)

	a := try(c.Open(ctx, "adamw", "adamw", nil)).must(t).Session
	try(c.Register(ctx, a, start)).must(t)
	for what, opts := range map[string]*optimd.StepOptions{
		"no seq":           {PartElements: 10},
		"clip_norm":        {Seq: 1, PartElements: 10, ClipNorm: &optimd.ClipNorm{MaxNorm: 1}},
		"worker":           {Seq: 1, PartElements: 10, Worker: "w"},
		"negative size":    {Seq: 1, PartElements: -1},
		"negative window":  {Seq: 1, PartElements: 10, PartsInFlight: -1},
		"invalid gradient": {Seq: 1, PartElements: 10},
	} {
		grads := g
		if what == "invalid gradient" {
			grads = map[string]optimd.Tensor{"b": {DType: optimd.F32, Shape: []uint64{5}, Data: make([]byte, 7)}}
		}
		_, err := c.Step(ctx, a, grads, opts)
		var se *optimd.ServerError
		if err == nil || errors.As(err, &se) {
			t.Errorf("%s: %v, want the client's own error", what, err)
		}
	}
	for _, sess := range []optimd.Session{s, a} {
		info := try(c.Info(ctx, sess, "")).must(t)
		if info.Steps != 0 || info.PendingStep != nil {
			t.Fatalf("%s: steps %d, pending %+v", sess.Name, info.Steps, info.PendingStep)
		}
		sameTensors(t, sess.Name+" parameters", try(c.Pull(ctx, sess, nil)).must(t), start)
	}
	if r := try(c.Step(ctx, s, g, nil)).must(t); r.Steps != 1 {
		t.Fatalf("a whole lamb step: steps %d", r.Steps)
	}
}

// TestSlicedLargeRangesAligned: ranges of 64 KiB and more carry a pad
// that puts their values where the daemon reads them in place: no
// gradient is copied to align it (optimd_unaligned_gradients_total stays
// 0), over client ids of 16 lengths and several windows; the results match
// whole steps. Encoded offline, every such range's data lies where 4 + its
// offset is a multiple of 16.
func TestSlicedLargeRangesAligned(t *testing.T) {
	d := daemontest.Start(t, "--metrics-listen", "127.0.0.1:0")
	c := dial(t, d.URL)
	ctx := testCtx(t)
	// Cut in parts of 50000 elements: big in 4 ranges of 200 KB, mat in 2
	// of 400 KB, every cut on a tensor's edge or inside it.
	shapes := map[string][]uint64{"big": {200000}, "mat": {400, 250}}
	start := randTensors(optimd.F32, 1, map[string][]uint64{"big": shapes["big"]})
	for name, t64 := range randTensors(optimd.F64, 2, map[string][]uint64{"mat": shapes["mat"]}) {
		start[name] = t64
	}
	whole, sliced := openPair(t, c, "large", "adamw", nil, start)
	for k := 1; k <= 16; k++ {
		g := randTensors(optimd.F32, int64(k), map[string][]uint64{"big": shapes["big"]})
		for name, t64 := range randTensors(optimd.F64, int64(k), map[string][]uint64{"mat": shapes["mat"]}) {
			g[name] = t64
		}
		want := try(c.Step(ctx, whole, g, &optimd.StepOptions{NoReturn: k%2 == 0})).must(t)
		got := try(c.Step(ctx, sliced, g, &optimd.StepOptions{Seq: 1, Client: strings.Repeat("c", k),
			PartElements: 50000, PartsInFlight: 1 + k%4, NoReturn: k%2 == 0})).must(t)
		if got.Steps != uint64(k) || got.Duplicate {
			t.Fatalf("step %d: %+v", k, got)
		}
		if k%2 == 0 {
			if got.Params != nil {
				t.Fatalf("step %d: params with NoReturn", k)
			}
		} else {
			sameTensors(t, fmt.Sprintf("step %d", k), got.Params, want.Params)
		}
	}
	sameSession(t, c, sliced, whole, "")
	if n := scrapeCounter(t, d, "optimd_unaligned_gradients_total"); n != 0 {
		t.Errorf("the daemon copied %g gradient ranges to align them", n)
	}

	g := randTensors(optimd.F32, 3, map[string][]uint64{"big": shapes["big"]})
	parts := try(optimd.SliceGrads(g, 70001)).must(t) // ranges of 280004 bytes, then 239992
	for n := 1; n <= 16; n++ {
		for _, p := range parts {
			r := optimd.NewStepPartRequest(optimd.Session{Name: "s", Token: strings.Repeat("ab", 16)}, p,
				&optimd.StepOptions{Seq: 1, Client: strings.Repeat("c", n)})
			r.ID = 1 << 40
			b := try(r.Encode()).must(t)
			data := p.Ranges["big"].Values.Data
			at := bytes.Index(b, data)
			if at < 0 || (4+at)%16 != 0 {
				t.Fatalf("client of %d, part %d: range data at body offset %d", n, p.Index, at)
			}
		}
	}
}

// TestSlicedStepPipelines: against a fake REP server that answers each
// part after a pause, Step keeps PartsInFlight parts (no more) outstanding
// at once, sends each part once, with the part keys, seq and
// client, and assembles the result from the replies.
func TestSlicedStepPipelines(t *testing.T) {
	sock, err := rep.NewSocket()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sock.Close() })
	l, err := sock.NewListener("tcp://127.0.0.1:0", nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Listen(); err != nil {
		t.Fatal(err)
	}
	var (
		mu          sync.Mutex
		outstanding int
		most        int
		order       []int
		problems    []string
	)
	serve := func(mctx mangos.Context) {
		for {
			b, err := mctx.Recv()
			if err != nil {
				return
			}
			var req struct {
				ID     uint64         `msgpack:"id"`
				Seq    uint64         `msgpack:"seq"`
				Client string         `msgpack:"client"`
				Part   map[string]int `msgpack:"part"`
				Grads  map[string]struct {
					Offset uint64 `msgpack:"offset"`
					Values struct {
						Data []byte `msgpack:"data"`
					} `msgpack:"values"`
				} `msgpack:"grads"`
			}
			mu.Lock()
			if err := msgpack.Unmarshal(b, &req); err != nil {
				problems = append(problems, err.Error())
			}
			if req.Seq != 3 || req.Client != "pipe" || req.Part["count"] != 6 {
				problems = append(problems, fmt.Sprintf("request %+v", req))
			}
			outstanding++
			most = max(most, outstanding)
			order = append(order, req.Part["index"])
			done := len(order)
			mu.Unlock()
			time.Sleep(30 * time.Millisecond)
			// Each part is one range of x, the reply its values doubled.
			params := map[string]any{}
			for name, rg := range req.Grads {
				v := append([]byte(nil), rg.Values.Data...)
				for i := range v {
					v[i] *= 2
				}
				params[name] = map[string]any{"offset": rg.Offset,
					"values": map[string]any{"dtype": "f32", "shape": []int{len(v) / 4}, "data": v}}
			}
			reply, _ := msgpack.Marshal(map[string]any{"v": 1, "id": req.ID, "ok": true, "steps": 1, "lr": 0.5,
				"next_lr": 0.25, "duplicate": false, "complete": done == 6, "parts": done, "params": params})
			mu.Lock()
			outstanding--
			mu.Unlock()
			if err := mctx.Send(reply); err != nil {
				return
			}
		}
	}
	for i := 0; i < 8; i++ {
		mctx, err := sock.OpenContext()
		if err != nil {
			t.Fatal(err)
		}
		go serve(mctx)
	}

	c := dial(t, l.Address())
	ctx := testCtx(t)
	x := make([]byte, 4*60)
	for i := range x {
		x[i] = byte(i)
	}
	grads := map[string]optimd.Tensor{"x": {DType: optimd.F32, Shape: []uint64{6, 10}, Data: x}}
	for _, window := range []int{1, 3} {
		mu.Lock()
		most, order = 0, nil
		mu.Unlock()
		got := try(c.Step(ctx, optimd.Session{Name: "s", Token: "t"}, grads,
			&optimd.StepOptions{Seq: 3, Client: "pipe", PartElements: 10, PartsInFlight: window})).must(t)
		mu.Lock()
		if len(problems) != 0 {
			t.Fatalf("the fake server saw: %v", problems)
		}
		// The fake's goroutines may note two parts that arrived together
		// in either order.
		slices.Sort(order)
		if most != window || !slices.Equal(order, []int{0, 1, 2, 3, 4, 5}) {
			t.Fatalf("window %d: at most %d parts outstanding, parts in the order %v", window, most, order)
		}
		mu.Unlock()
		wantData := make([]byte, len(x))
		for i := range wantData {
			wantData[i] = x[i] * 2
		}
		if got.Steps != 1 || got.LR != 0.5 || got.NextLR != 0.25 || got.Duplicate ||
			!bytes.Equal(got.Params["x"].Data, wantData) || !slices.Equal(got.Params["x"].Shape, []uint64{6, 10}) {
			t.Fatalf("window %d: %+v", window, got)
		}
	}
}

// TestSlicedClusterStep: Cluster.Step passes PartElements on, each server
// slicing its share (a server with no gradient in a step gets one empty
// part): the parameters match one session stepped whole.
func TestSlicedClusterStep(t *testing.T) {
	ctx := testCtx(t)
	cl, err := optimd.NewCluster(ctx, []string{daemontest.Start(t).URL, daemontest.Start(t).URL}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cl.Close() })
	c, _ := connect(t)
	opts := &optimd.OpenOptions{Hparams: optimd.Hparams{"lr": 1e-2, "weight_decay": 0.1}}
	start := randTensors(optimd.F32, 1, slicedShapes)
	cs := try(cl.Open(ctx, "cluster", "adamw", opts)).must(t)
	try(cl.Register(ctx, cs, start)).must(t)
	whole := try(c.Open(ctx, "whole", "adamw", opts)).must(t).Session
	try(c.Register(ctx, whole, start)).must(t)
	for step, size := range []int{7, 30, 1} {
		g := randTensors(optimd.F32, int64(100+step), slicedShapes)
		if step == 2 {
			g = map[string]optimd.Tensor{"b": g["b"]} // one server has nothing to step
		}
		want := try(c.Step(ctx, whole, g, nil)).must(t)
		got := try(cl.Step(ctx, cs, g, &optimd.StepOptions{Seq: uint64(step + 1), Client: "cl", PartElements: size})).must(t)
		if got.Steps() != want.Steps || got.Duplicate() {
			t.Fatalf("step %d: steps %d, want %d", step+1, got.Steps(), want.Steps)
		}
		sameTensors(t, fmt.Sprintf("step %d", step+1), got.Params, want.Params)
	}
	sameTensors(t, "parameters", try(cl.Pull(ctx, cs, nil)).must(t), try(c.Pull(ctx, whole, nil)).must(t))
}
