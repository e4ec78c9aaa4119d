package optimd

import (
	"context"
	"fmt"
)

// Sessions with workers (protocol.md, open's workers, step's Workers, join
// and leave): several workers push gradients to one session, combined in
// sync rounds, applied as they come (async), or as they come within a
// staleness bound (bounded).

// WorkersMode is how a session's workers push.
type WorkersMode string

const (
	// WorkersSync: Count pushes make a round, applied as one step with
	// their gradients combined in rank order (Reduce); each push waits
	// for its round, up to TimeoutMS.
	WorkersSync WorkersMode = "sync"
	// WorkersAsync: every push is applied when it arrives.
	WorkersAsync WorkersMode = "async"
	// WorkersBounded: as async, but a worker more than MaxStaleness pushes
	// ahead of the slowest member waits for it, up to TimeoutMS.
	WorkersBounded WorkersMode = "bounded"
)

// Reduce and OnTimeout values of a sync session.
const (
	ReduceMean       = "mean" // the daemon's default
	ReduceSum        = "sum"
	OnTimeoutFail    = "fail" // the daemon's default: waiting pushes get ErrTimeout
	OnTimeoutProceed = "proceed"
)

// Workers are open's workers settings. A zero field is left out of the
// request (the daemon's default applies); a key that does not belong to
// Mode is refused (ErrBadRequest). In info and join replies every key of
// the mode is filled in.
type Workers struct {
	Mode WorkersMode `json:"mode"`
	// Count (sync, required): the pushes a round combines, and the most
	// workers that can join.
	Count uint64 `json:"count,omitempty"`
	// Reduce (sync): ReduceMean or ReduceSum.
	Reduce string `json:"reduce,omitempty"`
	// TimeoutMS (sync and bounded; 1 to 86,400,000, default 60,000): how
	// long a round, or a bounded worker's wait, may last. A push can wait
	// that long: give its request a longer deadline (see Client.Join).
	TimeoutMS uint64 `json:"timeout_ms,omitempty"`
	// OnTimeout (sync): OnTimeoutFail or OnTimeoutProceed.
	OnTimeout string `json:"on_timeout,omitempty"`
	// MaxStaleness (bounded; default 0): how many pushes a worker may be
	// ahead of the slowest member.
	MaxStaleness uint64 `json:"max_staleness,omitempty"`
}

func (w *Workers) wire() map[string]any {
	m := map[string]any{"mode": string(w.Mode)}
	if w.Count != 0 {
		m["count"] = w.Count
	}
	if w.Reduce != "" {
		m["reduce"] = w.Reduce
	}
	if w.TimeoutMS != 0 {
		m["timeout_ms"] = w.TimeoutMS
	}
	if w.OnTimeout != "" {
		m["on_timeout"] = w.OnTimeout
	}
	if w.MaxStaleness != 0 {
		m["max_staleness"] = w.MaxStaleness
	}
	return m
}

// WorkerInfo is one member of a session's workers.
type WorkerInfo struct {
	Name string `json:"name"`
	// Rank orders a sync round's sum (the lowest first).
	Rank uint64 `json:"rank"`
	// Pushes applied so far (from 0 again after a restart).
	Pushes uint64 `json:"pushes"`
	// Staleness: the steps the session took since the parameters this
	// worker last received.
	Staleness uint64 `json:"staleness"`
	// Waiting: a push of it waits (for its round, or for the slowest).
	Waiting bool `json:"waiting"`
}

// WorkersInfo is a session's workers as info, join and leave report them.
type WorkersInfo struct {
	// Settings as open took them, every key of the mode filled in.
	Settings Workers `json:"settings"`
	// Members in rank order.
	Members []WorkerInfo `json:"members"`
	// RoundPushes (sync): the pushes the round in progress has.
	RoundPushes uint64 `json:"round_pushes"`
}

// Member returns the member named name, or nil.
func (w *WorkersInfo) Member(name string) *WorkerInfo {
	for i := range w.Members {
		if w.Members[i].Name == name {
			return &w.Members[i]
		}
	}
	return nil
}

// JoinResult is the reply to join.
type JoinResult struct {
	Rank    uint64      `json:"rank"`  // the worker's rank: the lowest free one
	Steps   uint64      `json:"steps"` // the session's step count
	Workers WorkersInfo `json:"workers"`
}

// LeaveResult is the reply to leave.
type LeaveResult struct {
	Steps   uint64      `json:"steps"`
	Workers WorkersInfo `json:"workers"`
}

func parseWorkersInfo(m map[string]any) (*WorkersInfo, error) {
	wm, err := getMap(m, "workers")
	if err != nil {
		return nil, err
	}
	var w WorkersInfo
	mode, err := getString(wm, "mode")
	if err != nil {
		return nil, fmt.Errorf("workers: %w", err)
	}
	w.Settings.Mode = WorkersMode(mode)
	for key, dst := range map[string]*uint64{"count": &w.Settings.Count, "timeout_ms": &w.Settings.TimeoutMS,
		"max_staleness": &w.Settings.MaxStaleness, "round_pushes": &w.RoundPushes} {
		if _, ok := wm[key]; ok {
			if *dst, err = getUint(wm, key); err != nil {
				return nil, fmt.Errorf("workers: %w", err)
			}
		}
	}
	for key, dst := range map[string]*string{"reduce": &w.Settings.Reduce, "on_timeout": &w.Settings.OnTimeout} {
		if _, ok := wm[key]; ok {
			if *dst, err = getString(wm, key); err != nil {
				return nil, fmt.Errorf("workers: %w", err)
			}
		}
	}
	members, err := getArray(wm, "members")
	if err != nil {
		return nil, fmt.Errorf("workers: %w", err)
	}
	w.Members = make([]WorkerInfo, len(members))
	for i, v := range members {
		mm, ok := v.(map[string]any)
		if !ok {
			return nil, wrongType(fmt.Sprintf("workers.members[%d]", i), v, "map")
		}
		if w.Members[i], err = parseWorkerInfo(mm); err != nil {
			return nil, fmt.Errorf("workers.members[%d]: %w", i, err)
		}
	}
	return &w, nil
}

func parseWorkerInfo(m map[string]any) (WorkerInfo, error) {
	var p WorkerInfo
	var err error
	if p.Name, err = getString(m, "name"); err != nil {
		return p, err
	}
	if p.Rank, err = getUint(m, "rank"); err != nil {
		return p, err
	}
	if p.Pushes, err = getUint(m, "pushes"); err != nil {
		return p, err
	}
	if p.Staleness, err = getUint(m, "staleness"); err != nil {
		return p, err
	}
	p.Waiting, err = getBool(m, "waiting")
	return p, err
}

// parseOptWorkers reads info's workers: nil for a session without workers.
func parseOptWorkers(m map[string]any) (*WorkersInfo, error) {
	if v, ok := m["workers"]; !ok || v == nil {
		return nil, nil
	}
	return parseWorkersInfo(m)
}

func workerRequest(op string, s Session, worker string) *Request {
	r := sessionRequest(op, s)
	r.Args["worker"] = worker
	return r
}

// NewJoinRequest builds join.
func NewJoinRequest(s Session, worker string) *Request { return workerRequest("join", s, worker) }

// NewLeaveRequest builds leave.
func NewLeaveRequest(s Session, worker string) *Request { return workerRequest("leave", s, worker) }

// ParseJoinReply parses the reply to join request id.
func ParseJoinReply(id uint64, b []byte) (*JoinResult, error) {
	return parseReply("join", id, b, func(m map[string]any) (*JoinResult, error) {
		var res JoinResult
		var err error
		if res.Rank, err = getUint(m, "rank"); err != nil {
			return nil, err
		}
		if res.Steps, err = getUint(m, "steps"); err != nil {
			return nil, err
		}
		w, err := parseWorkersInfo(m)
		if err != nil {
			return nil, err
		}
		res.Workers = *w
		return &res, nil
	})
}

// ParseLeaveReply parses the reply to leave request id.
func ParseLeaveReply(id uint64, b []byte) (*LeaveResult, error) {
	return parseReply("leave", id, b, func(m map[string]any) (*LeaveResult, error) {
		var res LeaveResult
		var err error
		if res.Steps, err = getUint(m, "steps"); err != nil {
			return nil, err
		}
		w, err := parseWorkersInfo(m)
		if err != nil {
			return nil, err
		}
		res.Workers = *w
		return &res, nil
	})
}

// Join makes worker (1 to 64 bytes) a member of a session opened with
// OpenOptions.Workers, at the lowest free rank; joining again changes
// nothing. A session without workers answers ErrBadRequest; a full one
// ErrLimit.
//
// Every push (Step with StepOptions.Worker) of a sync session waits for
// its round, and a bounded worker's push may wait for the slowest member,
// each up to the session's TimeoutMS: the request's deadline (ctx, or
// Options.Timeout when ctx has none) must be longer than that, or the call
// gives up while the push still counts on the daemon. This client never
// resends a request by itself; to retry a push, send it with the same Seq
// and Client: a retry of a push still waiting takes its place, one whose
// round was applied is answered as a Duplicate.
func (c *Client) Join(ctx context.Context, s Session, worker string) (*JoinResult, error) {
	return call(ctx, c, NewJoinRequest(s, worker), ParseJoinReply)
}

// Leave removes worker from the session (ErrUnknownWorker if it is not a
// member); a push of it that waits is answered ErrUnknownWorker.
func (c *Client) Leave(ctx context.Context, s Session, worker string) (*LeaveResult, error) {
	return call(ctx, c, NewLeaveRequest(s, worker), ParseLeaveReply)
}

// NewPullAsWorkerRequest builds pull as member worker ("": a plain pull);
// names as in NewPullRequest.
func NewPullAsWorkerRequest(s Session, worker string, names []string) *Request {
	r := NewPullRequest(s, names)
	if worker != "" {
		r.Args["worker"] = worker
	}
	return r
}

// PullAsWorker is Pull by member worker: its staleness starts again from 0
// (ErrUnknownWorker if it is not a member).
func (c *Client) PullAsWorker(ctx context.Context, s Session, worker string, names []string) (map[string]Tensor, error) {
	res, err := call(ctx, c, NewPullAsWorkerRequest(s, worker, names), ParsePullReply)
	if err != nil {
		return nil, err
	}
	return res.Params, nil
}
