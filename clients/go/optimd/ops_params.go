package optimd

import (
	"context"
	"fmt"
)

// Ops on a session's parameters: register, step, observe, pull, state.

// RegisterResult is the reply to register.
type RegisterResult struct {
	Registered uint64 `json:"registered"`
}

// NewRegisterRequest builds register: params maps names to initial values.
// They join DefaultGroup.
func NewRegisterRequest(s Session, params map[string]Tensor) *Request {
	return NewRegisterInGroupRequest(s, "", params)
}

// NewRegisterInGroupRequest builds register for the parameter group named
// group ("": DefaultGroup).
func NewRegisterInGroupRequest(s Session, group string, params map[string]Tensor) *Request {
	r := sessionRequest("register", s)
	r.Args["params"] = tensorMapToWire(params)
	if group != "" {
		r.Args["group"] = group
	}
	return r
}

// ParseRegisterReply parses the reply to register request id.
func ParseRegisterReply(id uint64, b []byte) (*RegisterResult, error) {
	return parseReply("register", id, b, func(m map[string]any) (*RegisterResult, error) {
		n, err := getUint(m, "registered")
		if err != nil {
			return nil, err
		}
		return &RegisterResult{Registered: n}, nil
	})
}

// Register adds parameters to a session and returns how many it added.
// Their optimizer state is created, zero-filled, on their first step.
func (c *Client) Register(ctx context.Context, s Session, params map[string]Tensor) (uint64, error) {
	return c.RegisterInGroup(ctx, s, "", params)
}

// RegisterInGroup is Register into the parameter group named group ("":
// DefaultGroup; an unknown group is ErrBadRequest).
func (c *Client) RegisterInGroup(ctx context.Context, s Session, group string, params map[string]Tensor) (uint64, error) {
	res, err := call(ctx, c, NewRegisterInGroupRequest(s, group, params), ParseRegisterReply)
	if err != nil {
		return 0, err
	}
	return res.Registered, nil
}

// StepOptions are step's optional keys.
type StepOptions struct {
	// NoReturn asks the daemon not to send the updated parameters back.
	NoReturn bool
	// Seq numbers the step in Client's numbering (1 to 2^53); 0 sends an
	// unsequenced step. A sequenced step whose Seq is not above the
	// highest the session applied for Client is not applied again: its
	// reply says Duplicate. Resend a step only with a Seq.
	Seq uint64
	// Client names the numbering Seq belongs to (at most 64 bytes); give
	// each worker a stable id.
	Client string
	// ClipValue > 0 clamps every gradient element to [-ClipValue,
	// ClipValue] before the update (torch's clip_grad_value_).
	ClipValue float64
	// ClipNorm scales the gradients down to a total norm of at most
	// MaxNorm before the update (torch's clip_grad_norm_); after
	// ClipValue when both are given.
	ClipNorm *ClipNorm
	// Worker names the member pushing (sessions opened with
	// OpenOptions.Workers, where every step is a push; see Client.Join).
	// A sync push returns when its round is applied, a bounded one may
	// wait for the slowest member: either up to the session's TimeoutMS.
	Worker string
	// PartElements > 0 makes Step send the step in parts of about that
	// many elements (a sliced step, docs/protocol.md "Sliced steps"; see
	// SliceGrads and Client.Step), so that the daemon updates one part
	// while the next is on the wire. It needs Seq; it cannot go with
	// ClipNorm or Worker. Request builders and StepPart ignore it.
	PartElements int
	// PartsInFlight is how many parts of a sliced step are sent before
	// the first reply is awaited (at most the daemon's --max-in-flight, 16
	// by default); 0 means DefaultPartsInFlight.
	PartsInFlight int
}

// ClipNorm configures norm clipping of a step's gradients.
type ClipNorm struct {
	MaxNorm float64 // > 0
	// NormType is the p of the p-norm, > 0 or math.Inf(1); 0 sends none
	// (the daemon's default, 2).
	NormType float64
	// PerGroup clips each group's gradients separately; the reply then
	// has GradNorms instead of GradNorm.
	PerGroup bool
}

// StepResult is the reply to step.
type StepResult struct {
	Steps     uint64  `json:"steps"`     // the session's step count after this step
	LR        float64 `json:"lr"`        // the lr this step used (default group)
	NextLR    float64 `json:"next_lr"`   // the lr the next step will use (default group)
	Duplicate bool    `json:"duplicate"` // a retry of a step already applied
	// LRs and NextLRs map each group to LR and NextLR's counterparts;
	// only for an applied step on a session with more than one group.
	LRs     map[string]float64 `json:"lrs"`
	NextLRs map[string]float64 `json:"next_lrs"`
	// GradNorm is the total gradient norm before clipping, with ClipNorm
	// (not PerGroup) on an applied step; nil otherwise.
	GradNorm *float64 `json:"grad_norm"`
	// GradNorms is the same per group (for groups that had gradients),
	// with ClipNorm.PerGroup.
	GradNorms map[string]float64 `json:"grad_norms"`
	Params    map[string]Tensor  `json:"params"` // new values; nil with NoReturn
	// A worker's push (sessions with workers; zero values otherwise):
	// Worker is who pushed, Pushes its pushes applied so far (this one
	// included), Staleness the steps the session took since the
	// parameters it last received (not counting this one). Sync: Combined
	// is the number of pushes the round combined. Bounded: Lead is how
	// many pushes it was ahead of the slowest member when admitted, and
	// Waited whether it had to wait.
	Worker    string `json:"worker,omitempty"`
	Pushes    uint64 `json:"pushes,omitempty"`
	Staleness uint64 `json:"staleness,omitempty"`
	Combined  uint64 `json:"combined,omitempty"`
	Lead      uint64 `json:"lead,omitempty"`
	Waited    bool   `json:"waited,omitempty"`
}

// NewStepRequest builds step: grads maps parameter names to gradients (any
// subset of the registered parameters). opts may be nil.
func NewStepRequest(s Session, grads map[string]Tensor, opts *StepOptions) *Request {
	if opts == nil {
		opts = &StepOptions{}
	}
	r := sessionRequest("step", s)
	r.Args["grads"] = tensorMapToWire(grads)
	stepOptionArgs(r, opts)
	return r
}

// stepOptionArgs puts the keys of opts in a step request (a part's too).
func stepOptionArgs(r *Request, opts *StepOptions) {
	// Sent even when true, so that a capture of the request says what the
	// client asked for.
	r.Args["return"] = !opts.NoReturn
	if opts.Seq != 0 {
		r.Args["seq"] = opts.Seq
	}
	if opts.Client != "" {
		r.Args["client"] = opts.Client
	}
	if opts.ClipValue != 0 {
		r.Args["clip_value"] = opts.ClipValue
	}
	if cn := opts.ClipNorm; cn != nil {
		m := map[string]any{"max_norm": cn.MaxNorm}
		if cn.NormType != 0 {
			m["norm_type"] = cn.NormType
		}
		if cn.PerGroup {
			m["per_group"] = true
		}
		r.Args["clip_norm"] = m
	}
	if opts.Worker != "" {
		r.Args["worker"] = opts.Worker
	}
}

// getLRMap reads an optional map from group name to float; absent gives
// nil.
func getLRMap(m map[string]any, key string) (map[string]float64, error) {
	if _, ok := m[key]; !ok {
		return nil, nil
	}
	raw, err := getMap(m, key)
	if err != nil {
		return nil, err
	}
	out := make(map[string]float64, len(raw))
	for k, v := range raw {
		if out[k], err = asFloat(key+"."+k, v); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// ParseStepReply parses the reply to step request id.
func ParseStepReply(id uint64, b []byte) (*StepResult, error) {
	return parseReply("step", id, b, func(m map[string]any) (*StepResult, error) {
		var res StepResult
		var err error
		if res.Steps, err = getUint(m, "steps"); err != nil {
			return nil, err
		}
		if res.LR, err = getFloat(m, "lr"); err != nil {
			return nil, err
		}
		if res.NextLR, err = getFloat(m, "next_lr"); err != nil {
			return nil, err
		}
		if res.Duplicate, err = getBool(m, "duplicate"); err != nil {
			return nil, err
		}
		if res.LRs, err = getLRMap(m, "lrs"); err != nil {
			return nil, err
		}
		if res.NextLRs, err = getLRMap(m, "next_lrs"); err != nil {
			return nil, err
		}
		if _, ok := m["grad_norm"]; ok {
			n, err := getFloat(m, "grad_norm")
			if err != nil {
				return nil, err
			}
			res.GradNorm = &n
		}
		if res.GradNorms, err = getLRMap(m, "grad_norms"); err != nil {
			return nil, err
		}
		if v, ok := m["params"]; ok {
			if res.Params, err = tensorMapFromWire(v); err != nil {
				return nil, fmt.Errorf("key \"params\": %w", err)
			}
		}
		if _, ok := m["worker"]; ok {
			if res.Worker, err = getString(m, "worker"); err != nil {
				return nil, err
			}
		}
		for key, dst := range map[string]*uint64{"pushes": &res.Pushes, "staleness": &res.Staleness,
			"combined": &res.Combined, "lead": &res.Lead} {
			if _, ok := m[key]; ok {
				if *dst, err = getUint(m, key); err != nil {
					return nil, err
				}
			}
		}
		if _, ok := m["waited"]; ok {
			if res.Waited, err = getBool(m, "waited"); err != nil {
				return nil, err
			}
		}
		return &res, nil
	})
}

// Step applies one optimizer step with the given gradients. opts may be
// nil.
//
// With opts.PartElements > 0 the step is sliced: the gradients, taken in
// the order of their names as if concatenated, are cut into parts of
// PartElements elements (SliceGrads: a tensor within one part goes whole,
// one that a cut crosses as ranges of its bytes, nothing copied), and
// opts.PartsInFlight parts at a time are in flight on this connection, sent
// in order on REQ contexts of the one socket. The result is that of the
// same step sent whole, bit for bit: the counters and lrs of the part that
// completed the step, Params assembled from every part's reply (nil with
// NoReturn), Duplicate when every part was one. It needs opts.Seq and
// refuses ClipNorm and Worker before sending anything; a session with
// workers or Lookahead, or an optimizer that is not element-wise
// (PluginInfo.Sliced), is ErrBadRequest from the daemon.
//
// A part that fails ends the sliced step with its error (the lowest
// part's, when several fail) once the parts in flight are answered; no
// further part is sent. The parts applied before it stay applied, and the
// session has a pending step (SessionInfo.PendingStep) that refuses other
// steps and changes with ErrStepPending until it is complete. To complete
// it, call Step again with the same Seq, Client, gradients and
// PartElements (so that it is cut into the same parts): the parts the
// daemon applied are answered as duplicates and the others applied, so
// the step completes exactly once. A client that lost the gradients ends
// it with AbandonStep.
func (c *Client) Step(ctx context.Context, s Session, grads map[string]Tensor, opts *StepOptions) (*StepResult, error) {
	if opts != nil && opts.PartElements != 0 {
		return c.slicedStep(ctx, s, grads, opts)
	}
	return call(ctx, c, NewStepRequest(s, grads, opts), ParseStepReply)
}

// ObserveResult is the reply to observe.
type ObserveResult struct {
	LR  float64            `json:"lr"`  // the next lr of the named group, or of the default group
	LRs map[string]float64 `json:"lrs"` // every group's next lr
}

// NewObserveRequest builds observe: metric goes to the schedulers that
// take one (plateau) of the group named group ("": every such group).
func NewObserveRequest(s Session, metric float64, group string) *Request {
	r := sessionRequest("observe", s)
	r.Args["metric"] = metric
	if group != "" {
		r.Args["group"] = group
	}
	return r
}

// ParseObserveReply parses the reply to observe request id.
func ParseObserveReply(id uint64, b []byte) (*ObserveResult, error) {
	return parseReply("observe", id, b, func(m map[string]any) (*ObserveResult, error) {
		var res ObserveResult
		var err error
		if res.LR, err = getFloat(m, "lr"); err != nil {
			return nil, err
		}
		if _, err = get(m, "lrs"); err != nil {
			return nil, err
		}
		if res.LRs, err = getLRMap(m, "lrs"); err != nil {
			return nil, err
		}
		return &res, nil
	})
}

// Observe reports a metric (e.g. a validation loss; NaN counts as a bad
// epoch) to the schedulers that take one, as torch's
// ReduceLROnPlateau.step(metric) does, for the group named group ("":
// every group whose scheduler takes metrics). It fails with
// ErrBadRequest when no targeted group has such a scheduler.
func (c *Client) Observe(ctx context.Context, s Session, metric float64, group string) (*ObserveResult, error) {
	return call(ctx, c, NewObserveRequest(s, metric, group), ParseObserveReply)
}

// PullResult is the reply to pull.
type PullResult struct {
	Params map[string]Tensor `json:"params"`
}

// NewPullRequest builds pull: names nil asks for every parameter, an empty
// non-nil slice for none.
func NewPullRequest(s Session, names []string) *Request {
	r := sessionRequest("pull", s)
	if names != nil {
		r.Args["names"] = names
	}
	return r
}

// ParsePullReply parses the reply to pull request id.
func ParsePullReply(id uint64, b []byte) (*PullResult, error) {
	return parseReply("pull", id, b, func(m map[string]any) (*PullResult, error) {
		v, err := get(m, "params")
		if err != nil {
			return nil, err
		}
		params, err := tensorMapFromWire(v)
		if err != nil {
			return nil, fmt.Errorf("key \"params\": %w", err)
		}
		return &PullResult{Params: params}, nil
	})
}

// Pull returns the current values of the named parameters (nil: all).
func (c *Client) Pull(ctx context.Context, s Session, names []string) (map[string]Tensor, error) {
	res, err := call(ctx, c, NewPullRequest(s, names), ParsePullReply)
	if err != nil {
		return nil, err
	}
	return res.Params, nil
}

// StateResult is the reply to state: parameter name -> slot key -> tensor.
type StateResult struct {
	State map[string]map[string]Tensor `json:"state"`
}

// NewStateRequest builds state: names nil asks for every parameter.
func NewStateRequest(s Session, names []string) *Request {
	r := sessionRequest("state", s)
	if names != nil {
		r.Args["names"] = names
	}
	return r
}

// ParseStateReply parses the reply to state request id.
func ParseStateReply(id uint64, b []byte) (*StateResult, error) {
	return parseReply("state", id, b, func(m map[string]any) (*StateResult, error) {
		raw, err := getMap(m, "state")
		if err != nil {
			return nil, err
		}
		res := &StateResult{State: make(map[string]map[string]Tensor, len(raw))}
		for name, v := range raw {
			slots, err := tensorMapFromWire(v)
			if err != nil {
				return nil, fmt.Errorf("state of %q: %w", name, err)
			}
			res.State[name] = slots
		}
		return res, nil
	})
}

// State returns the optimizer state the daemon holds for the named
// parameters (nil: all): a map from slot key (as Plugins lists them) to
// tensor, empty for a parameter that never stepped.
func (c *Client) State(ctx context.Context, s Session, names []string) (map[string]map[string]Tensor, error) {
	res, err := call(ctx, c, NewStateRequest(s, names), ParseStateReply)
	if err != nil {
		return nil, err
	}
	return res.State, nil
}
