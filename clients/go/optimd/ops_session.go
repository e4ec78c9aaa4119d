package optimd

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"math"
)

// Ops on a session's lifetime and settings: open, attach, info, hparams,
// set_hparams, close, export, import.

// Session names a session and carries the token every request on it
// needs. Keep the token: the daemon lists it nowhere.
type Session struct {
	Name  string `json:"session"`
	Token string `json:"token"`
}

// Hparams maps hyperparameter keys to values. In a request a value is a
// Go bool, integer or float; in a reply it is a bool, int64 or float64.
type Hparams map[string]any

// Durability says when a session's changes reach the disk (protocol.md,
// open).
type Durability string

const (
	DurabilityAlways   Durability = "always"   // logged and flushed before the reply
	DurabilityInterval Durability = "interval" // logged first, flushed every --sync-interval
	DurabilityNone     Durability = "none"     // snapshots only
)

// OpenOptions are open's optional keys; a zero field is left out of the
// request (the daemon's default applies).
type OpenOptions struct {
	Hparams Hparams
	// Scheduler is a scheduler plugin id, or SchedulerSequential or
	// SchedulerChained with Schedulers (and, sequential, Milestones).
	Scheduler    string
	SchedHparams Hparams
	Schedulers   []SchedulerSpec
	Milestones   []int
	Durability   Durability
	// Lookahead wraps the optimizer in Lookahead; nil: off.
	Lookahead *Lookahead
	// OpenKey (16 to 64 printable ASCII bytes, see NewOpenKey) makes the
	// open safe to retry: sent again with the same key, an open whose
	// first attempt created the session answers with that session
	// (OpenResult.Existing) instead of ErrSessionExists. Keep it secret,
	// like the token.
	OpenKey string
	// Groups are parameter groups besides DefaultGroup, configured by the
	// fields above (torch's param_groups).
	Groups []GroupSpec
	// Workers makes the session one that several workers push to (see
	// Client.Join); nil: a plain session.
	Workers *Workers
}

// DefaultGroup is the group that OpenOptions' own Hparams and Scheduler
// configure, and that parameters join unless registered elsewhere.
const DefaultGroup = "default"

// GroupSpec declares one parameter group at open.
type GroupSpec struct {
	// Name: 1 to 64 bytes of A-Z a-z 0-9 _ . -, unique, not DefaultGroup.
	Name string
	// Hparams are applied over the default group's, so a group names only
	// what differs.
	Hparams Hparams
	// Scheduler "" keeps the default group's scheduler (with its
	// SchedHparams as the starting point); a plugin id starts from that
	// plugin's defaults. NoScheduler gives the group none and wins over
	// Scheduler.
	Scheduler    string
	NoScheduler  bool
	SchedHparams Hparams
	// Schedulers and Milestones as in OpenOptions, with Scheduler
	// SchedulerSequential or SchedulerChained.
	Schedulers []SchedulerSpec
	Milestones []int
}

// Scheduler ids that combine the schedulers listed in Schedulers.
const (
	// SchedulerSequential runs Schedulers[i] from epoch Milestones[i-1]
	// (torch's SequentialLR).
	SchedulerSequential = "sequential"
	// SchedulerChained steps every one of Schedulers each epoch (torch's
	// ChainedScheduler).
	SchedulerChained = "chained"
)

// SchedulerSpec is one part of a combined schedule.
type SchedulerSpec struct {
	Scheduler    string  `json:"scheduler"` // a scheduler plugin id
	SchedHparams Hparams `json:"sched_hparams"`
}

// Lookahead configures Lookahead (Zhang et al. 2019) around the optimizer:
// every K-th step of a parameter, slow += Alpha * (param - slow) and the
// parameter becomes slow. In OpenOptions a zero field takes the daemon's
// default (K 5, Alpha 0.5).
type Lookahead struct {
	K     int64   `json:"k"`
	Alpha float64 `json:"alpha"`
}

func encodeSchedule(dst map[string]any, specs []SchedulerSpec, milestones []int) {
	if specs != nil {
		a := make([]any, len(specs))
		for i, sp := range specs {
			m := map[string]any{"scheduler": sp.Scheduler}
			if sp.SchedHparams != nil {
				m["sched_hparams"] = map[string]any(sp.SchedHparams)
			}
			a[i] = m
		}
		dst["schedulers"] = a
	}
	if milestones != nil {
		dst["milestones"] = append([]int(nil), milestones...)
	}
}

// NewOpenKey returns a random open key (32 hex digits) for
// OpenOptions.OpenKey. Use one key for every attempt of one open.
func NewOpenKey() string {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		// crypto/rand does not fail on the platforms Go supports; a
		// predictable key would let another client claim the session.
		panic("optimd: crypto/rand: " + err.Error())
	}
	return hex.EncodeToString(b[:])
}

// OpenResult is the reply to open.
type OpenResult struct {
	Session
	// LR is the lr the first step will use (for an Existing session, the
	// next step).
	LR float64 `json:"lr"`
	// Existing is true when the session was created by an earlier attempt
	// of this open (same OpenKey).
	Existing bool `json:"existing"`
}

// NewOpenRequest builds open for a new session named name, driven by the
// optimizer plugin optimizer. opts may be nil.
func NewOpenRequest(name, optimizer string, opts *OpenOptions) *Request {
	r := newRequest("open")
	r.Args["session"] = name
	r.Args["optimizer"] = optimizer
	if opts != nil {
		if opts.Hparams != nil {
			r.Args["hparams"] = map[string]any(opts.Hparams)
		}
		if opts.Scheduler != "" {
			r.Args["scheduler"] = opts.Scheduler
		}
		if opts.SchedHparams != nil {
			r.Args["sched_hparams"] = map[string]any(opts.SchedHparams)
		}
		encodeSchedule(r.Args, opts.Schedulers, opts.Milestones)
		if opts.Lookahead != nil {
			la := map[string]any{}
			if opts.Lookahead.K != 0 {
				la["k"] = opts.Lookahead.K
			}
			if opts.Lookahead.Alpha != 0 {
				la["alpha"] = opts.Lookahead.Alpha
			}
			r.Args["lookahead"] = la
		}
		if opts.Durability != "" {
			r.Args["durability"] = string(opts.Durability)
		}
		if opts.OpenKey != "" {
			r.Args["open_key"] = opts.OpenKey
		}
		if opts.Groups != nil {
			groups := make([]any, len(opts.Groups))
			for i, g := range opts.Groups {
				gm := map[string]any{"name": g.Name}
				if g.Hparams != nil {
					gm["hparams"] = map[string]any(g.Hparams)
				}
				if g.NoScheduler {
					gm["scheduler"] = nil
				} else if g.Scheduler != "" {
					gm["scheduler"] = g.Scheduler
				}
				if g.SchedHparams != nil {
					gm["sched_hparams"] = map[string]any(g.SchedHparams)
				}
				encodeSchedule(gm, g.Schedulers, g.Milestones)
				groups[i] = gm
			}
			r.Args["groups"] = groups
		}
		if opts.Workers != nil {
			r.Args["workers"] = opts.Workers.wire()
		}
	}
	return r
}

// ParseOpenReply parses the reply to open request id.
func ParseOpenReply(id uint64, b []byte) (*OpenResult, error) {
	return parseReply("open", id, b, func(m map[string]any) (*OpenResult, error) {
		var res OpenResult
		var err error
		if res.Session, err = parseSession(m); err != nil {
			return nil, err
		}
		if res.LR, err = getFloat(m, "lr"); err != nil {
			return nil, err
		}
		// Daemons from before open_key answer without it.
		if _, ok := m["existing"]; ok {
			if res.Existing, err = getBool(m, "existing"); err != nil {
				return nil, err
			}
		}
		return &res, nil
	})
}

func parseSession(m map[string]any) (Session, error) {
	var s Session
	var err error
	if s.Name, err = getString(m, "session"); err != nil {
		return s, err
	}
	if s.Token, err = getString(m, "token"); err != nil {
		return s, err
	}
	return s, nil
}

// Open creates a session. opts may be nil.
func (c *Client) Open(ctx context.Context, name, optimizer string, opts *OpenOptions) (*OpenResult, error) {
	return call(ctx, c, NewOpenRequest(name, optimizer, opts), ParseOpenReply)
}

// ParamInfo describes one registered parameter.
type ParamInfo struct {
	Name  string   `json:"name"`
	Group string   `json:"group,omitempty"` // "" from a daemon without groups
	DType DType    `json:"dtype"`
	Shape []uint64 `json:"shape"`
	Steps uint64   `json:"steps"` // steps that updated it
}

// SessionInfo is the reply to info and attach.
type SessionInfo struct {
	// ClientSeq is the highest seq applied for the client named in the
	// request; nil when the request named none.
	ClientSeq *uint64 `json:"client_seq"`
	// Lookahead is the session's Lookahead setting; nil when off.
	Lookahead        *Lookahead `json:"lookahead"`
	Session          string     `json:"session"`
	Durability       Durability `json:"durability"`
	Optimizer        string     `json:"optimizer"`
	OptimizerVersion string     `json:"optimizer_version"`
	Scheduler        string     `json:"scheduler"` // "" for none
	// Schedulers (and, sequential, Milestones) make up a combined
	// schedule; nil otherwise.
	Schedulers   []SchedulerSpec `json:"schedulers"`
	Milestones   []int           `json:"milestones"`
	Hparams      Hparams         `json:"hparams"`
	SchedHparams Hparams         `json:"sched_hparams"`
	BaseLR       float64         `json:"base_lr"`
	LR           float64         `json:"lr"` // the lr the next step will use
	Steps        uint64          `json:"steps"`
	Params       []ParamInfo     `json:"params"` // in registration order
	// Groups are every parameter group, DefaultGroup first; the fields
	// above (Scheduler to LR) are the default group's. nil from a daemon
	// without groups.
	Groups []GroupInfo `json:"groups"`
	// Workers are the settings, members and round of a session opened
	// with workers; nil otherwise.
	Workers *WorkersInfo `json:"workers"`
	// PendingStep is the sliced step the session is in the middle of; nil
	// when there is none.
	PendingStep *PendingStep `json:"pending_step"`
}

// PendingStep is a sliced step that has not received all its parts
// (docs/protocol.md, step, "Sliced steps"): the Client and Seq it was
// sent under, its number of parts and how many of them were applied.
// Until the last part is in, the session refuses other steps and changes
// with ErrStepPending; sending the step again with the same Seq completes
// it, Client.AbandonStep ends it as it stands.
type PendingStep struct {
	Client  string `json:"client"`
	Seq     uint64 `json:"seq"`
	Count   uint64 `json:"count"`
	Applied uint64 `json:"applied"`
}

// parsePendingStep reads info's pending_step: absent or nil when none.
func parsePendingStep(m map[string]any) (*PendingStep, error) {
	if v, ok := m["pending_step"]; !ok || v == nil {
		return nil, nil
	}
	pm, err := getMap(m, "pending_step")
	if err != nil {
		return nil, err
	}
	var p PendingStep
	if p.Client, err = getString(pm, "client"); err != nil {
		return nil, fmt.Errorf("pending_step: %w", err)
	}
	for key, dst := range map[string]*uint64{"seq": &p.Seq, "count": &p.Count, "applied": &p.Applied} {
		if *dst, err = getUint(pm, key); err != nil {
			return nil, fmt.Errorf("pending_step: %w", err)
		}
	}
	return &p, nil
}

// GroupInfo describes one parameter group.
type GroupInfo struct {
	Name      string `json:"name"`
	Scheduler string `json:"scheduler"` // "" for none
	// Schedulers and Milestones as in SessionInfo.
	Schedulers   []SchedulerSpec `json:"schedulers"`
	Milestones   []int           `json:"milestones"`
	Hparams      Hparams         `json:"hparams"`
	SchedHparams Hparams         `json:"sched_hparams"`
	BaseLR       float64         `json:"base_lr"`
	LR           float64         `json:"lr"`     // the lr the group's next step will use
	Params       uint64          `json:"params"` // parameters in the group
}

// Group returns the group named name, or nil.
func (s *SessionInfo) Group(name string) *GroupInfo { return findGroup(s.Groups, name) }

func findGroup(groups []GroupInfo, name string) *GroupInfo {
	for i := range groups {
		if groups[i].Name == name {
			return &groups[i]
		}
	}
	return nil
}

// parseGroups reads the groups array of info, hparams and set_hparams
// replies; absent (a daemon without groups) gives nil.
func parseGroups(m map[string]any) ([]GroupInfo, error) {
	if _, ok := m["groups"]; !ok {
		return nil, nil
	}
	raw, err := getArray(m, "groups")
	if err != nil {
		return nil, err
	}
	out := make([]GroupInfo, len(raw))
	for i, v := range raw {
		gm, ok := v.(map[string]any)
		if !ok {
			return nil, wrongType(fmt.Sprintf("groups[%d]", i), v, "map")
		}
		g := &out[i]
		if g.Name, err = getString(gm, "name"); err != nil {
			return nil, fmt.Errorf("groups[%d]: %w", i, err)
		}
		if g.Scheduler, err = getOptString(gm, "scheduler"); err != nil {
			return nil, fmt.Errorf("groups[%d]: %w", i, err)
		}
		if g.Schedulers, g.Milestones, err = parseSchedule(gm); err != nil {
			return nil, fmt.Errorf("groups[%d]: %w", i, err)
		}
		if err := parseHparamsKeys(gm, &g.Hparams, &g.SchedHparams, &g.BaseLR, &g.LR); err != nil {
			return nil, fmt.Errorf("groups[%d]: %w", i, err)
		}
		if g.Params, err = getUint(gm, "params"); err != nil {
			return nil, fmt.Errorf("groups[%d]: %w", i, err)
		}
	}
	return out, nil
}

// parseSchedule reads the schedulers and milestones of a combined
// schedule; both are absent otherwise.
func parseSchedule(m map[string]any) ([]SchedulerSpec, []int, error) {
	var specs []SchedulerSpec
	var milestones []int
	if _, ok := m["schedulers"]; ok {
		raw, err := getArray(m, "schedulers")
		if err != nil {
			return nil, nil, err
		}
		specs = make([]SchedulerSpec, len(raw))
		for i, v := range raw {
			sm, ok := v.(map[string]any)
			if !ok {
				return nil, nil, wrongType(fmt.Sprintf("schedulers[%d]", i), v, "map")
			}
			if specs[i].Scheduler, err = getString(sm, "scheduler"); err != nil {
				return nil, nil, fmt.Errorf("schedulers[%d]: %w", i, err)
			}
			if specs[i].SchedHparams, err = getHparams(sm, "sched_hparams"); err != nil {
				return nil, nil, fmt.Errorf("schedulers[%d]: %w", i, err)
			}
		}
	}
	if _, ok := m["milestones"]; ok {
		raw, err := getArray(m, "milestones")
		if err != nil {
			return nil, nil, err
		}
		milestones = make([]int, len(raw))
		for i, v := range raw {
			n, err := asUint(fmt.Sprintf("milestones[%d]", i), v)
			if err != nil {
				return nil, nil, err
			}
			if n > math.MaxInt32 {
				return nil, nil, fmt.Errorf("milestones[%d] out of range (%d)", i, n)
			}
			milestones[i] = int(n)
		}
	}
	return specs, milestones, nil
}

// parseLookahead reads info's lookahead: nil (off) or {k, alpha}. Daemons
// from before Lookahead leave it out.
func parseLookahead(m map[string]any) (*Lookahead, error) {
	v, ok := m["lookahead"]
	if !ok || v == nil {
		return nil, nil
	}
	lm, err := getMap(m, "lookahead")
	if err != nil {
		return nil, err
	}
	var la Lookahead
	if la.K, err = getInt(lm, "k"); err != nil {
		return nil, fmt.Errorf("lookahead: %w", err)
	}
	if la.Alpha, err = getFloat(lm, "alpha"); err != nil {
		return nil, fmt.Errorf("lookahead: %w", err)
	}
	return &la, nil
}

// NewInfoRequest builds info; with client non-empty the reply carries
// that client's ClientSeq.
func NewInfoRequest(s Session, client string) *Request {
	r := sessionRequest("info", s)
	if client != "" {
		r.Args["client"] = client
	}
	return r
}

// NewAttachRequest builds attach.
func NewAttachRequest(s Session) *Request { return sessionRequest("attach", s) }

// ParseInfoReply parses the reply to info request id.
func ParseInfoReply(id uint64, b []byte) (*SessionInfo, error) {
	return parseReply("info", id, b, parseSessionInfo)
}

// ParseAttachReply parses the reply to attach request id.
func ParseAttachReply(id uint64, b []byte) (*SessionInfo, error) {
	return parseReply("attach", id, b, parseSessionInfo)
}

func parseSessionInfo(m map[string]any) (*SessionInfo, error) {
	var res SessionInfo
	var err error
	if _, ok := m["client_seq"]; ok {
		seq, err := getUint(m, "client_seq")
		if err != nil {
			return nil, err
		}
		res.ClientSeq = &seq
	}
	for key, dst := range map[string]*string{"session": &res.Session,
		"optimizer": &res.Optimizer, "optimizer_version": &res.OptimizerVersion} {
		if *dst, err = getString(m, key); err != nil {
			return nil, err
		}
	}
	dur, err := getString(m, "durability")
	if err != nil {
		return nil, err
	}
	res.Durability = Durability(dur)
	if res.Lookahead, err = parseLookahead(m); err != nil {
		return nil, err
	}
	if res.Scheduler, err = getOptString(m, "scheduler"); err != nil {
		return nil, err
	}
	if res.Schedulers, res.Milestones, err = parseSchedule(m); err != nil {
		return nil, err
	}
	if err := parseHparamsKeys(m, &res.Hparams, &res.SchedHparams, &res.BaseLR, &res.LR); err != nil {
		return nil, err
	}
	if res.Steps, err = getUint(m, "steps"); err != nil {
		return nil, err
	}
	params, err := getArray(m, "params")
	if err != nil {
		return nil, err
	}
	res.Params = make([]ParamInfo, len(params))
	for i, v := range params {
		pm, ok := v.(map[string]any)
		if !ok {
			return nil, wrongType(fmt.Sprintf("params[%d]", i), v, "map")
		}
		p := &res.Params[i]
		if p.Name, err = getString(pm, "name"); err != nil {
			return nil, err
		}
		if _, ok := pm["group"]; ok {
			if p.Group, err = getString(pm, "group"); err != nil {
				return nil, err
			}
		}
		dt, err := getString(pm, "dtype")
		if err != nil {
			return nil, err
		}
		p.DType = DType(dt)
		shape, err := getArray(pm, "shape")
		if err != nil {
			return nil, err
		}
		p.Shape = make([]uint64, len(shape))
		for j, d := range shape {
			if p.Shape[j], err = asUint("shape", d); err != nil {
				return nil, err
			}
		}
		if p.Steps, err = getUint(pm, "steps"); err != nil {
			return nil, err
		}
	}
	if res.Groups, err = parseGroups(m); err != nil {
		return nil, err
	}
	if res.Workers, err = parseOptWorkers(m); err != nil {
		return nil, err
	}
	if res.PendingStep, err = parsePendingStep(m); err != nil {
		return nil, err
	}
	return &res, nil
}

// parseHparamsKeys reads the keys info and hparams replies share.
func parseHparamsKeys(m map[string]any, hp, shp *Hparams, baseLR, lr *float64) error {
	var err error
	if *hp, err = getHparams(m, "hparams"); err != nil {
		return err
	}
	if *shp, err = getHparams(m, "sched_hparams"); err != nil {
		return err
	}
	if *baseLR, err = getFloat(m, "base_lr"); err != nil {
		return err
	}
	*lr, err = getFloat(m, "lr")
	return err
}

// Info describes a session. With client non-empty, ClientSeq tells the
// highest seq the session applied for that client, so a worker that keeps
// its client id across restarts can go on numbering above it.
func (c *Client) Info(ctx context.Context, s Session, client string) (*SessionInfo, error) {
	return call(ctx, c, NewInfoRequest(s, client), ParseInfoReply)
}

// Attach checks the token and describes the session, as Info does; use it
// when (re)connecting to an existing session.
func (c *Client) Attach(ctx context.Context, s Session) (*SessionInfo, error) {
	return call(ctx, c, NewAttachRequest(s), ParseAttachReply)
}

// HparamsResult is the reply to hparams and set_hparams.
type HparamsResult struct {
	Hparams      Hparams `json:"hparams"`
	SchedHparams Hparams `json:"sched_hparams"`
	BaseLR       float64 `json:"base_lr"` // the lr given at open
	LR           float64 `json:"lr"`      // the lr the next step will use
	// Groups as in SessionInfo; the fields above are the default group's.
	Groups []GroupInfo `json:"groups"`
}

// Group returns the group named name, or nil.
func (h *HparamsResult) Group(name string) *GroupInfo { return findGroup(h.Groups, name) }

// NewHparamsRequest builds hparams.
func NewHparamsRequest(s Session) *Request { return sessionRequest("hparams", s) }

// NewSetHparamsRequest builds set_hparams for every group.
func NewSetHparamsRequest(s Session, hp Hparams) *Request {
	return NewSetGroupHparamsRequest(s, "", hp)
}

// NewSetGroupHparamsRequest builds set_hparams for the group named group
// ("": every group, each keeping the keys hp does not name).
func NewSetGroupHparamsRequest(s Session, group string, hp Hparams) *Request {
	r := sessionRequest("set_hparams", s)
	if hp == nil {
		hp = Hparams{}
	}
	r.Args["hparams"] = map[string]any(hp)
	if group != "" {
		r.Args["group"] = group
	}
	return r
}

func parseHparamsResult(m map[string]any) (*HparamsResult, error) {
	var res HparamsResult
	if err := parseHparamsKeys(m, &res.Hparams, &res.SchedHparams, &res.BaseLR, &res.LR); err != nil {
		return nil, err
	}
	var err error
	if res.Groups, err = parseGroups(m); err != nil {
		return nil, err
	}
	return &res, nil
}

// ParseHparamsReply parses the reply to hparams request id.
func ParseHparamsReply(id uint64, b []byte) (*HparamsResult, error) {
	return parseReply("hparams", id, b, parseHparamsResult)
}

// ParseSetHparamsReply parses the reply to set_hparams request id.
func ParseSetHparamsReply(id uint64, b []byte) (*HparamsResult, error) {
	return parseReply("set_hparams", id, b, parseHparamsResult)
}

// Hparams returns a session's hyperparameters and lrs.
func (c *Client) Hparams(ctx context.Context, s Session) (*HparamsResult, error) {
	return call(ctx, c, NewHparamsRequest(s), ParseHparamsReply)
}

// SetHparams changes mutable hyperparameters of every group before the
// next step; all keys are checked before any changes.
func (c *Client) SetHparams(ctx context.Context, s Session, hp Hparams) (*HparamsResult, error) {
	return call(ctx, c, NewSetHparamsRequest(s, hp), ParseSetHparamsReply)
}

// SetGroupHparams is SetHparams for one group (an unknown group is
// ErrBadRequest).
func (c *Client) SetGroupHparams(ctx context.Context, s Session, group string, hp Hparams) (*HparamsResult, error) {
	return call(ctx, c, NewSetGroupHparamsRequest(s, group, hp), ParseSetHparamsReply)
}

// CloseResult is the reply to close: no keys.
type CloseResult struct{}

// NewCloseRequest builds close.
func NewCloseRequest(s Session) *Request { return sessionRequest("close", s) }

// ParseCloseReply parses the reply to close request id.
func ParseCloseReply(id uint64, b []byte) (*CloseResult, error) {
	return parseReply("close", id, b, func(map[string]any) (*CloseResult, error) {
		return &CloseResult{}, nil
	})
}

// CloseSession deletes a session and its files on the daemon. (Close
// closes the Client's connection.)
func (c *Client) CloseSession(ctx context.Context, s Session) error {
	_, err := call(ctx, c, NewCloseRequest(s), ParseCloseReply)
	return err
}

// ExportResult is the reply to export.
type ExportResult struct {
	Snapshot []byte `json:"snapshot"` // one safetensors file
}

// NewExportRequest builds export.
func NewExportRequest(s Session) *Request { return sessionRequest("export", s) }

// ParseExportReply parses the reply to export request id.
func ParseExportReply(id uint64, b []byte) (*ExportResult, error) {
	return parseReply("export", id, b, func(m map[string]any) (*ExportResult, error) {
		snap, err := getBin(m, "snapshot")
		if err != nil {
			return nil, err
		}
		return &ExportResult{Snapshot: snap}, nil
	})
}

// Export returns the whole session (parameters, state, hyperparameters,
// counters, sequence records, token) as one safetensors file, for Import.
func (c *Client) Export(ctx context.Context, s Session) ([]byte, error) {
	res, err := call(ctx, c, NewExportRequest(s), ParseExportReply)
	if err != nil {
		return nil, err
	}
	return res.Snapshot, nil
}

// ImportOptions are import's optional keys; a zero field keeps what the
// snapshot says.
type ImportOptions struct {
	Session    string // a new name
	Durability Durability
}

// ImportResult is the reply to import. The token is new.
type ImportResult struct {
	Session
	Steps uint64 `json:"steps"`
}

// NewImportRequest builds import. opts may be nil.
func NewImportRequest(snapshot []byte, opts *ImportOptions) *Request {
	r := newRequest("import")
	if snapshot == nil {
		snapshot = []byte{}
	}
	r.Args["snapshot"] = snapshot
	if opts != nil {
		if opts.Session != "" {
			r.Args["session"] = opts.Session
		}
		if opts.Durability != "" {
			r.Args["durability"] = string(opts.Durability)
		}
	}
	return r
}

// ParseImportReply parses the reply to import request id.
func ParseImportReply(id uint64, b []byte) (*ImportResult, error) {
	return parseReply("import", id, b, func(m map[string]any) (*ImportResult, error) {
		var res ImportResult
		var err error
		if res.Session, err = parseSession(m); err != nil {
			return nil, err
		}
		if res.Steps, err = getUint(m, "steps"); err != nil {
			return nil, err
		}
		return &res, nil
	})
}

// Import creates a session from an exported snapshot, with a new token.
// opts may be nil.
func (c *Client) Import(ctx context.Context, snapshot []byte, opts *ImportOptions) (*ImportResult, error) {
	return call(ctx, c, NewImportRequest(snapshot, opts), ParseImportReply)
}

// SwitchResult is the reply to switch.
type SwitchResult struct {
	Optimizer        string `json:"optimizer"`
	OptimizerVersion string `json:"optimizer_version"`
	// Carried lists the state slot keys kept from the previous optimizer
	// (same key and layout); the new optimizer's other slots start
	// zero-filled. Empty, not nil, when none was.
	Carried []string `json:"carried"`
}

// NewSwitchRequest builds switch to the optimizer plugin optimizer; hp
// (may be nil) applies over the hyperparameters the session keeps.
func NewSwitchRequest(s Session, optimizer string, hp Hparams) *Request {
	r := sessionRequest("switch", s)
	r.Args["optimizer"] = optimizer
	if hp != nil {
		r.Args["hparams"] = map[string]any(hp)
	}
	return r
}

// ParseSwitchReply parses the reply to switch request id.
func ParseSwitchReply(id uint64, b []byte) (*SwitchResult, error) {
	return parseReply("switch", id, b, func(m map[string]any) (*SwitchResult, error) {
		var res SwitchResult
		var err error
		if res.Optimizer, err = getString(m, "optimizer"); err != nil {
			return nil, err
		}
		if res.OptimizerVersion, err = getString(m, "optimizer_version"); err != nil {
			return nil, err
		}
		if res.Carried, err = getStrings(m, "carried"); err != nil {
			return nil, err
		}
		return &res, nil
	})
}

// Switch moves the session to another optimizer plugin between two steps
// (e.g. SGD to Adam mid-training). The new optimizer takes the session's
// values of the hyperparameters it shares, its defaults for the rest, then
// hp (may be nil) over them; steps, parameters, groups and schedules carry
// on. All or nothing: a refused hyperparameter leaves the session as it
// was.
func (c *Client) Switch(ctx context.Context, s Session, optimizer string, hp Hparams) (*SwitchResult, error) {
	return call(ctx, c, NewSwitchRequest(s, optimizer, hp), ParseSwitchReply)
}
