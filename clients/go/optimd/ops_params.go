package optimd

import (
	"context"
	"fmt"
)

// Ops on a session's parameters: register, step, pull, state.

// RegisterResult is the reply to register.
type RegisterResult struct {
	Registered uint64 `json:"registered"`
}

// NewRegisterRequest builds register: params maps names to initial values.
func NewRegisterRequest(s Session, params map[string]Tensor) *Request {
	r := sessionRequest("register", s)
	r.Args["params"] = tensorMapToWire(params)
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
	res, err := call(ctx, c, NewRegisterRequest(s, params), ParseRegisterReply)
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
}

// StepResult is the reply to step.
type StepResult struct {
	Steps     uint64            `json:"steps"`     // the session's step count after this step
	LR        float64           `json:"lr"`        // the lr this step used
	NextLR    float64           `json:"next_lr"`   // the lr the next step will use
	Duplicate bool              `json:"duplicate"` // a retry of a step already applied
	Params    map[string]Tensor `json:"params"`    // new values; nil with NoReturn
}

// NewStepRequest builds step: grads maps parameter names to gradients (any
// subset of the registered parameters). opts may be nil.
func NewStepRequest(s Session, grads map[string]Tensor, opts *StepOptions) *Request {
	if opts == nil {
		opts = &StepOptions{}
	}
	r := sessionRequest("step", s)
	r.Args["grads"] = tensorMapToWire(grads)
	// Sent even when true, so that a capture of the request says what the
	// client asked for.
	r.Args["return"] = !opts.NoReturn
	if opts.Seq != 0 {
		r.Args["seq"] = opts.Seq
	}
	if opts.Client != "" {
		r.Args["client"] = opts.Client
	}
	return r
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
		if v, ok := m["params"]; ok {
			if res.Params, err = tensorMapFromWire(v); err != nil {
				return nil, fmt.Errorf("key \"params\": %w", err)
			}
		}
		return &res, nil
	})
}

// Step applies one optimizer step with the given gradients. opts may be
// nil.
func (c *Client) Step(ctx context.Context, s Session, grads map[string]Tensor, opts *StepOptions) (*StepResult, error) {
	return call(ctx, c, NewStepRequest(s, grads, opts), ParseStepReply)
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
