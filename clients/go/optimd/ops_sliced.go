package optimd

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"sync"
	"sync/atomic"
)

// Sliced steps (docs/protocol.md, step, "Sliced steps"): one step sent as
// several step requests with part {index, count}, each gradient whole or a
// range {offset, values}; abandon_step; info's pending_step.

// MaxParts is the most parts one sliced step may have.
const MaxParts = 65536

// DefaultPartsInFlight is StepOptions.PartsInFlight's default.
const DefaultPartsInFlight = 2

// Range is a run of a parameter's elements in C (row-major) order: Values,
// a one-dimensional tensor of the parameter's dtype with n >= 1 elements,
// is the gradient (in a request) or the new value (in a reply) of elements
// Offset to Offset+n-1.
type Range struct {
	Offset uint64 `json:"offset"`
	Values Tensor `json:"values"`
}

// StepPart is one part of a sliced step: part Index of Count (Count 1 to
// MaxParts, each index sent once). A parameter is in Grads (its whole
// gradient, as in a plain step) or in Ranges, not both; the parts of a
// step together must cover each parameter they name exactly once.
type StepPart struct {
	Index, Count int
	Grads        map[string]Tensor
	Ranges       map[string]Range
}

// SliceGrads cuts a step's gradients into the parts of a sliced step: the
// gradients, taken in the order of their names (sorted), flattened in C
// order and as if concatenated, are cut into consecutive parts of
// partElements elements (the last one shorter). A tensor that lies within
// one part is in its Grads; one that a cut crosses is in the Ranges of
// each part it spans, its Values sharing the gradient's bytes (nothing is
// copied). Tensors with no elements go whole into the part being filled.
// When the gradients have more than partElements × MaxParts elements the
// parts are made larger, so that there are at most MaxParts. grads with no
// elements at all give one part. The same arguments always give the same
// parts, so a retry cuts a step as the first attempt did.
func SliceGrads(grads map[string]Tensor, partElements int) ([]StepPart, error) {
	if partElements < 1 {
		return nil, fmt.Errorf("optimd: sliced step: PartElements must be >= 1, not %d", partElements)
	}
	names := make([]string, 0, len(grads))
	total := 0
	for name, g := range grads {
		if err := g.Validate(); err != nil {
			return nil, fmt.Errorf("optimd: sliced step: gradient %q: %w", name, err)
		}
		names = append(names, name)
		total += g.Len()
	}
	sort.Strings(names)
	size := max(partElements, (total+MaxParts-1)/MaxParts)
	newPart := func() StepPart { return StepPart{Grads: map[string]Tensor{}, Ranges: map[string]Range{}} }
	parts := []StepPart{newPart()}
	room := size
	for _, name := range names {
		g := grads[name]
		n, es := g.Len(), g.DType.Size()
		if n == 0 {
			parts[len(parts)-1].Grads[name] = g
			continue
		}
		for at := 0; at < n; {
			if room == 0 {
				parts = append(parts, newPart())
				room = size
			}
			take := min(n-at, room)
			p := &parts[len(parts)-1]
			if take == n {
				p.Grads[name] = g
			} else {
				end := (at + take) * es
				p.Ranges[name] = Range{Offset: uint64(at), Values: Tensor{
					DType: g.DType, Shape: []uint64{uint64(take)}, Data: g.Data[at*es : end : end]}}
			}
			at += take
			room -= take
		}
	}
	for i := range parts {
		parts[i].Index, parts[i].Count = i, len(parts)
	}
	return parts, nil
}

// StepPartResult is the reply to one part of a sliced step.
type StepPartResult struct {
	// Steps, LR and NextLR as in StepResult; until the step is complete
	// Steps does not count it and NextLR equals LR.
	Steps     uint64  `json:"steps"`
	LR        float64 `json:"lr"`
	NextLR    float64 `json:"next_lr"`
	Duplicate bool    `json:"duplicate"` // a part applied before; Params are the current values
	// LRs and NextLRs as in StepResult.
	LRs     map[string]float64 `json:"lrs"`
	NextLRs map[string]float64 `json:"next_lrs"`
	// Complete is true when this part completed the step, or the step was
	// complete before it.
	Complete bool `json:"complete"`
	// Parts is the number of the step's parts applied so far.
	Parts uint64 `json:"parts"`
	// Params maps each parameter the part named to the new values of the
	// elements it carried; nil with NoReturn.
	Params map[string]Range `json:"params"`
}

// NewStepPartRequest builds one part of a sliced step: a step request with
// part {index, count}. opts carries Seq (required by the daemon), Client,
// NoReturn and ClipValue; PartElements and PartsInFlight are ignored, and
// the daemon refuses a part with ClipNorm or Worker. opts may be nil (the
// daemon then refuses the part: it has no seq). A name in both p.Grads and
// p.Ranges is sent once, as its range.
func NewStepPartRequest(s Session, p StepPart, opts *StepOptions) *Request {
	if opts == nil {
		opts = &StepOptions{}
	}
	r := sessionRequest("step", s)
	g := make(map[string]any, len(p.Grads)+len(p.Ranges))
	for name, t := range p.Grads {
		g[name] = t.wire()
	}
	// Values of 64 KiB or more are padded as whole tensors are (wire.go):
	// the encoder writes the range map into the message's one buffer.
	for name, rg := range p.Ranges {
		g[name] = map[string]any{"offset": rg.Offset, "values": rg.Values.wire()}
	}
	r.Args["grads"] = g
	r.Args["part"] = map[string]any{"index": p.Index, "count": p.Count}
	stepOptionArgs(r, opts)
	return r
}

// parseStepCounters reads the keys every step reply has.
func parseStepCounters(m map[string]any, steps *uint64, lr, nextLR *float64, dup *bool,
	lrs, nextLRs *map[string]float64) error {
	var err error
	if *steps, err = getUint(m, "steps"); err != nil {
		return err
	}
	if *lr, err = getFloat(m, "lr"); err != nil {
		return err
	}
	if *nextLR, err = getFloat(m, "next_lr"); err != nil {
		return err
	}
	if *dup, err = getBool(m, "duplicate"); err != nil {
		return err
	}
	if *lrs, err = getLRMap(m, "lrs"); err != nil {
		return err
	}
	*nextLRs, err = getLRMap(m, "next_lrs")
	return err
}

// rangeFromWire reads a parameter of a part's reply: {offset, values}, or
// a whole tensor (offset 0, flattened).
func rangeFromWire(v any) (Range, error) {
	m, ok := v.(map[string]any)
	if !ok {
		return Range{}, fmt.Errorf("is %s, not a map", typeName(v))
	}
	if _, ok := m["offset"]; !ok {
		t, err := tensorFromWire(v)
		if err != nil {
			return Range{}, err
		}
		return Range{Values: Tensor{DType: t.DType, Shape: []uint64{uint64(t.Len())}, Data: t.Data}}, nil
	}
	off, err := getUint(m, "offset")
	if err != nil {
		return Range{}, err
	}
	vv, err := get(m, "values")
	if err != nil {
		return Range{}, err
	}
	t, err := tensorFromWire(vv)
	if err != nil {
		return Range{}, fmt.Errorf("values: %w", err)
	}
	if len(t.Shape) != 1 {
		return Range{}, fmt.Errorf("values of %d dimensions, not 1", len(t.Shape))
	}
	return Range{Offset: off, Values: t}, nil
}

// ParseStepPartReply parses the reply to a step part request id.
func ParseStepPartReply(id uint64, b []byte) (*StepPartResult, error) {
	return parseReply("step", id, b, func(m map[string]any) (*StepPartResult, error) {
		var res StepPartResult
		err := parseStepCounters(m, &res.Steps, &res.LR, &res.NextLR, &res.Duplicate, &res.LRs, &res.NextLRs)
		if err != nil {
			return nil, err
		}
		if res.Complete, err = getBool(m, "complete"); err != nil {
			return nil, err
		}
		if res.Parts, err = getUint(m, "parts"); err != nil {
			return nil, err
		}
		if _, ok := m["params"]; ok {
			raw, err := getMap(m, "params")
			if err != nil {
				return nil, err
			}
			res.Params = make(map[string]Range, len(raw))
			for name, v := range raw {
				if res.Params[name], err = rangeFromWire(v); err != nil {
					return nil, fmt.Errorf("params: %q: %w", name, err)
				}
			}
		}
		return &res, nil
	})
}

// StepPart sends one part of a sliced step (docs/protocol.md, step,
// "Sliced steps"), for a caller that cuts its own parts (SliceGrads cuts
// them as Step does): opts.Seq is required, opts.Client names its
// numbering. The daemon checks that the parts fit together (no element
// twice: ErrBadRequest; none missing when the last one arrives:
// ErrBadRequest naming the first missing range, that part not applied, so
// it can be sent again corrected). A part already applied is answered
// with Duplicate and the current values.
func (c *Client) StepPart(ctx context.Context, s Session, p StepPart, opts *StepOptions) (*StepPartResult, error) {
	for name := range p.Ranges {
		if _, ok := p.Grads[name]; ok {
			return nil, fmt.Errorf("optimd: step part: %q is in both Grads and Ranges", name)
		}
	}
	return call(ctx, c, NewStepPartRequest(s, p, opts), ParseStepPartReply)
}

// slicedStep is Step with opts.PartElements: the parts pipelined, their
// replies assembled into one StepResult.
func (c *Client) slicedStep(ctx context.Context, s Session, grads map[string]Tensor, opts *StepOptions) (*StepResult, error) {
	switch {
	case opts.Seq == 0:
		return nil, errors.New("optimd: step: a sliced step (PartElements) needs Seq, the step's number in " +
			"Client's numbering: every part carries it, and a retry with the same Seq completes a step cut short")
	case opts.ClipNorm != nil:
		return nil, errors.New("optimd: step: ClipNorm cannot go with a sliced step (PartElements): " +
			"it needs every gradient at once (ClipValue can)")
	case opts.Worker != "":
		return nil, errors.New("optimd: step: a session with workers takes no sliced steps (PartElements)")
	case opts.PartsInFlight < 0:
		return nil, fmt.Errorf("optimd: step: PartsInFlight must be >= 0, not %d", opts.PartsInFlight)
	}
	parts, err := SliceGrads(grads, opts.PartElements)
	if err != nil {
		return nil, err
	}
	window := opts.PartsInFlight
	if window == 0 {
		window = DefaultPartsInFlight
	}

	// The parameters' new values, filled in as the parts' replies come.
	var out map[string]Tensor
	filled := map[string]int{}
	var mu sync.Mutex
	if !opts.NoReturn {
		out = make(map[string]Tensor, len(grads))
		for name, g := range grads {
			out[name] = Tensor{DType: g.DType, Shape: append([]uint64{}, g.Shape...), Data: make([]byte, len(g.Data))}
		}
	}
	assemble := func(params map[string]Range) error {
		mu.Lock()
		defer mu.Unlock()
		for name, rg := range params {
			t, ok := out[name]
			n, es := rg.Values.Len(), rg.Values.DType.Size()
			if !ok || rg.Values.DType != t.DType || rg.Offset > uint64(t.Len()) || uint64(n) > uint64(t.Len())-rg.Offset {
				return &ProtocolError{Op: "step", Reason: fmt.Sprintf("sliced step: %q came back as %d %s elements at offset %d",
					name, n, rg.Values.DType, rg.Offset)}
			}
			copy(t.Data[int(rg.Offset)*es:], rg.Values.Data)
			filled[name] += n
		}
		return nil
	}

	replies := make([]*StepPartResult, len(parts))
	errs := make([]error, len(parts))
	var failed atomic.Bool
	var wg sync.WaitGroup
	slots := make(chan struct{}, window)
	for i, p := range parts {
		slots <- struct{}{}
		if failed.Load() {
			break
		}
		f, err := c.send(ctx, NewStepPartRequest(s, p, opts))
		if err != nil {
			errs[i] = err
			break
		}
		wg.Add(1)
		go func(i int, f *inflight) {
			defer wg.Done()
			defer func() { <-slots }()
			b, err := f.wait()
			var res *StepPartResult
			if err == nil {
				res, err = ParseStepPartReply(f.r.ID, b)
			}
			if err == nil && out != nil {
				err = assemble(res.Params)
			}
			if err != nil {
				errs[i] = err
				failed.Store(true)
				return
			}
			replies[i] = res
		}(i, f)
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			return nil, fmt.Errorf("optimd: sliced step, part %d of %d: %w", i, len(parts), err)
		}
	}

	// The part that completed the step; a retry of a complete step has
	// only duplicates, whose counters are the step's.
	var final *StepPartResult
	dup := true
	for _, r := range replies {
		dup = dup && r.Duplicate
		if r.Complete && (final == nil || final.Duplicate) {
			final = r
		}
	}
	if final == nil {
		return nil, &ProtocolError{Op: "step", Reason: fmt.Sprintf("sliced step: no part of %d reported the step complete", len(parts))}
	}
	for name, t := range out {
		if filled[name] != t.Len() {
			return nil, &ProtocolError{Op: "step", Reason: fmt.Sprintf("sliced step: the replies held %d of the %d elements of %q",
				filled[name], t.Len(), name)}
		}
	}
	return &StepResult{Steps: final.Steps, LR: final.LR, NextLR: final.NextLR, Duplicate: dup,
		LRs: final.LRs, NextLRs: final.NextLRs, Params: out}, nil
}

// AbandonStepResult is the reply to abandon_step.
type AbandonStepResult struct {
	Steps     uint64             `json:"steps"`   // the session's step count, the abandoned step included
	LR        float64            `json:"lr"`      // the lr the step used (default group)
	NextLR    float64            `json:"next_lr"` // the lr the next step will use
	Duplicate bool               `json:"duplicate"`
	LRs       map[string]float64 `json:"lrs"`
	NextLRs   map[string]float64 `json:"next_lrs"`
	Parts     uint64             `json:"parts"` // the parts that had been applied
}

// NewAbandonStepRequest builds abandon_step for the pending sliced step
// sent as seq by client.
func NewAbandonStepRequest(s Session, seq uint64, client string) *Request {
	r := sessionRequest("abandon_step", s)
	r.Args["seq"] = seq
	if client != "" {
		r.Args["client"] = client
	}
	return r
}

// ParseAbandonStepReply parses the reply to abandon_step request id.
func ParseAbandonStepReply(id uint64, b []byte) (*AbandonStepResult, error) {
	return parseReply("abandon_step", id, b, func(m map[string]any) (*AbandonStepResult, error) {
		var res AbandonStepResult
		err := parseStepCounters(m, &res.Steps, &res.LR, &res.NextLR, &res.Duplicate, &res.LRs, &res.NextLRs)
		if err != nil {
			return nil, err
		}
		if res.Parts, err = getUint(m, "parts"); err != nil {
			return nil, err
		}
		return &res, nil
	})
}

// AbandonStep ends the session's pending sliced step
// (SessionInfo.PendingStep), sent as seq by client, as it stands: for a
// client that lost the gradients of a step it sent in part and cannot send
// the rest. The elements its parts updated stay updated, the others are
// untouched, and it counts as a step (session and parameter step counts,
// scheduler, seq recorded: its other parts are duplicates from now on). A
// parameter covered only in part is left with some elements one update
// behind, so use it to unblock a session, not to step. No pending step, or
// another seq or client: ErrBadRequest.
func (c *Client) AbandonStep(ctx context.Context, s Session, seq uint64, client string) (*AbandonStepResult, error) {
	return call(ctx, c, NewAbandonStepRequest(s, seq, client), ParseAbandonStepReply)
}
