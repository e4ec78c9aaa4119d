package optimd

import (
	"context"
	"fmt"
)

// Ops about the daemon itself: hello, plugins, sessions.

// HelloResult is the reply to hello.
type HelloResult struct {
	Server     string    `json:"server"`  // "optimd"
	Version    string    `json:"version"` // the daemon's version
	Protocol   uint64    `json:"protocol"`
	ABI        [2]uint64 `json:"abi"`         // plugin ABI [major, minor]
	MaxMessage uint64    `json:"max_message"` // request size limit in bytes
}

// NewHelloRequest builds hello; client (optional) is free text for the
// daemon's log.
func NewHelloRequest(client string) *Request {
	r := newRequest("hello")
	if client != "" {
		r.Args["client"] = client
	}
	return r
}

// ParseHelloReply parses the reply to hello request id.
func ParseHelloReply(id uint64, b []byte) (*HelloResult, error) {
	return parseReply("hello", id, b, func(m map[string]any) (*HelloResult, error) {
		var h HelloResult
		var err error
		if h.Server, err = getString(m, "server"); err != nil {
			return nil, err
		}
		if h.Version, err = getString(m, "version"); err != nil {
			return nil, err
		}
		if h.Protocol, err = getUint(m, "protocol"); err != nil {
			return nil, err
		}
		abi, err := getArray(m, "abi")
		if err != nil {
			return nil, err
		}
		if len(abi) != 2 {
			return nil, fmt.Errorf("key \"abi\" has %d elements, not 2", len(abi))
		}
		for i := range abi {
			if h.ABI[i], err = asUint("abi", abi[i]); err != nil {
				return nil, err
			}
		}
		if h.MaxMessage, err = getUint(m, "max_message"); err != nil {
			return nil, err
		}
		return &h, nil
	})
}

// Hello checks that the peer is an optimd daemon and returns its versions
// and limits.
func (c *Client) Hello(ctx context.Context, client string) (*HelloResult, error) {
	return call(ctx, c, NewHelloRequest(client), ParseHelloReply)
}

// HparamDecl declares one hyperparameter of a plugin.
type HparamDecl struct {
	Key          string  `json:"key"`
	Type         string  `json:"type"` // "float", "int" or "bool"
	Required     bool    `json:"required"`
	Mutable      bool    `json:"mutable"` // may set_hparams change it
	Min          float64 `json:"min"`
	Max          float64 `json:"max"`
	MinExclusive bool    `json:"min_exclusive"`
	MaxExclusive bool    `json:"max_exclusive"`
	Default      any     `json:"default"` // bool, int64, float64, or nil when Required
	Doc          string  `json:"doc"`
}

// SlotDecl declares one piece of per-parameter optimizer state.
type SlotDecl struct {
	Key       string `json:"key"`
	DType     string `json:"dtype"`      // "param", "f32" or "f64"
	Shape     string `json:"shape"`      // "param", "scalar", "rows", "cols", or one this client does not know
	EnabledBy string `json:"enabled_by"` // bool hyperparameter switching it on; "" if always on
	Doc       string `json:"doc"`
}

// SlotDecl.Shape values the protocol defines. For a parameter of shape
// [..., r, c] a "rows" slot has shape [..., r] and a "cols" slot [..., c]
// (factored statistics, as Adafactor keeps); below 2 dimensions "rows" has
// the parameter's shape and "cols" is a scalar. Later daemons may add
// shapes: compare against these rather than rejecting others.
const (
	SlotShapeParam  = "param"
	SlotShapeScalar = "scalar"
	SlotShapeRows   = "rows"
	SlotShapeCols   = "cols"
)

// PluginInfo describes one loaded plugin.
type PluginInfo struct {
	ID          string       `json:"id"` // the name open takes
	Kind        string       `json:"kind"`
	Version     string       `json:"version"`
	Description string       `json:"description"`
	Hparams     []HparamDecl `json:"hparams"`
	Slots       []SlotDecl   `json:"slots"`  // optimizers only; nil for a scheduler
	DTypes      []DType      `json:"dtypes"` // optimizers only; nil for a scheduler
	// Optimizers only: whether its steps may be sent in parts (sliced steps,
	// docs/protocol.md). nil for a scheduler or a daemon that does not say.
	Sliced *bool `json:"sliced,omitempty"`
}

// Plugin kinds.
const (
	KindOptimizer = "optimizer"
	KindScheduler = "scheduler"
)

// PluginsResult is the reply to plugins.
type PluginsResult struct {
	Plugins []PluginInfo `json:"plugins"`
}

// NewPluginsRequest builds plugins.
func NewPluginsRequest() *Request { return newRequest("plugins") }

// ParsePluginsReply parses the reply to plugins request id.
func ParsePluginsReply(id uint64, b []byte) (*PluginsResult, error) {
	return parseReply("plugins", id, b, func(m map[string]any) (*PluginsResult, error) {
		raw, err := getArray(m, "plugins")
		if err != nil {
			return nil, err
		}
		res := &PluginsResult{Plugins: make([]PluginInfo, len(raw))}
		for i, v := range raw {
			pm, ok := v.(map[string]any)
			if !ok {
				return nil, wrongType(fmt.Sprintf("plugins[%d]", i), v, "map")
			}
			if res.Plugins[i], err = parsePlugin(pm); err != nil {
				return nil, fmt.Errorf("plugins[%d]: %w", i, err)
			}
		}
		return res, nil
	})
}

func parsePlugin(m map[string]any) (PluginInfo, error) {
	var p PluginInfo
	var err error
	for key, dst := range map[string]*string{"id": &p.ID, "kind": &p.Kind, "version": &p.Version, "description": &p.Description} {
		if *dst, err = getString(m, key); err != nil {
			return p, err
		}
	}
	decls, err := getArray(m, "hparams")
	if err != nil {
		return p, err
	}
	p.Hparams = make([]HparamDecl, len(decls))
	for i, v := range decls {
		dm, ok := v.(map[string]any)
		if !ok {
			return p, wrongType(fmt.Sprintf("hparams[%d]", i), v, "map")
		}
		if p.Hparams[i], err = parseHparamDecl(dm); err != nil {
			return p, fmt.Errorf("hparams[%d]: %w", i, err)
		}
	}
	if _, ok := m["slots"]; ok {
		slots, err := getArray(m, "slots")
		if err != nil {
			return p, err
		}
		p.Slots = make([]SlotDecl, len(slots))
		for i, v := range slots {
			sm, ok := v.(map[string]any)
			if !ok {
				return p, wrongType(fmt.Sprintf("slots[%d]", i), v, "map")
			}
			if p.Slots[i], err = parseSlotDecl(sm); err != nil {
				return p, fmt.Errorf("slots[%d]: %w", i, err)
			}
		}
	}
	if _, ok := m["dtypes"]; ok {
		names, err := getStrings(m, "dtypes")
		if err != nil {
			return p, err
		}
		p.DTypes = make([]DType, len(names))
		for i, n := range names {
			p.DTypes[i] = DType(n)
		}
	}
	if _, ok := m["sliced"]; ok {
		sliced, err := getBool(m, "sliced")
		if err != nil {
			return p, err
		}
		p.Sliced = &sliced
	}
	return p, nil
}

func parseHparamDecl(m map[string]any) (HparamDecl, error) {
	var d HparamDecl
	var err error
	for key, dst := range map[string]*string{"key": &d.Key, "type": &d.Type, "doc": &d.Doc} {
		if *dst, err = getString(m, key); err != nil {
			return d, err
		}
	}
	for key, dst := range map[string]*bool{"required": &d.Required, "mutable": &d.Mutable,
		"min_exclusive": &d.MinExclusive, "max_exclusive": &d.MaxExclusive} {
		if *dst, err = getBool(m, key); err != nil {
			return d, err
		}
	}
	if d.Min, err = getFloat(m, "min"); err != nil {
		return d, err
	}
	if d.Max, err = getFloat(m, "max"); err != nil {
		return d, err
	}
	def, err := get(m, "default")
	if err != nil {
		return d, err
	}
	switch def.(type) {
	case nil, bool, int64, float64:
		d.Default = def
	default:
		return d, wrongType("default", def, "bool, int, float or nil")
	}
	return d, nil
}

func parseSlotDecl(m map[string]any) (SlotDecl, error) {
	var s SlotDecl
	var err error
	for key, dst := range map[string]*string{"key": &s.Key, "dtype": &s.DType, "shape": &s.Shape, "doc": &s.Doc} {
		if *dst, err = getString(m, key); err != nil {
			return s, err
		}
	}
	if s.EnabledBy, err = getOptString(m, "enabled_by"); err != nil {
		return s, err
	}
	return s, nil
}

// Plugins lists the loaded plugins, sorted by id.
func (c *Client) Plugins(ctx context.Context) ([]PluginInfo, error) {
	res, err := call(ctx, c, NewPluginsRequest(), ParsePluginsReply)
	if err != nil {
		return nil, err
	}
	return res.Plugins, nil
}

// SessionSummary is one entry of sessions.
type SessionSummary struct {
	Session   string `json:"session"`
	Optimizer string `json:"optimizer"`
	Scheduler string `json:"scheduler"` // "" for none
	Params    uint64 `json:"params"`    // registered parameters
	Steps     uint64 `json:"steps"`
}

// SessionsResult is the reply to sessions.
type SessionsResult struct {
	Sessions []SessionSummary `json:"sessions"`
}

// NewSessionsRequest builds sessions.
func NewSessionsRequest() *Request { return newRequest("sessions") }

// ParseSessionsReply parses the reply to sessions request id.
func ParseSessionsReply(id uint64, b []byte) (*SessionsResult, error) {
	return parseReply("sessions", id, b, func(m map[string]any) (*SessionsResult, error) {
		raw, err := getArray(m, "sessions")
		if err != nil {
			return nil, err
		}
		res := &SessionsResult{Sessions: make([]SessionSummary, len(raw))}
		for i, v := range raw {
			sm, ok := v.(map[string]any)
			if !ok {
				return nil, wrongType(fmt.Sprintf("sessions[%d]", i), v, "map")
			}
			s := &res.Sessions[i]
			if s.Session, err = getString(sm, "session"); err != nil {
				return nil, err
			}
			if s.Optimizer, err = getString(sm, "optimizer"); err != nil {
				return nil, err
			}
			if s.Scheduler, err = getOptString(sm, "scheduler"); err != nil {
				return nil, err
			}
			if s.Params, err = getUint(sm, "params"); err != nil {
				return nil, err
			}
			if s.Steps, err = getUint(sm, "steps"); err != nil {
				return nil, err
			}
		}
		return res, nil
	})
}

// Sessions lists the daemon's sessions, sorted by name (never tokens).
func (c *Client) Sessions(ctx context.Context) ([]SessionSummary, error) {
	res, err := call(ctx, c, NewSessionsRequest(), ParseSessionsReply)
	if err != nil {
		return nil, err
	}
	return res.Sessions, nil
}

// Admin ops: reload and load hot-swap plugins, drop closes any session,
// shutdown stops the daemon. They need the token the daemon was started
// with (--admin-token); a wrong one is ErrBadToken.

// PluginLoad reports one plugin file that reload or load tried.
type PluginLoad struct {
	Path   string `json:"path"`
	Loaded bool   `json:"loaded"`
	// ID and Version name the plugin now current when Loaded.
	ID      string `json:"id,omitempty"`
	Version string `json:"version,omitempty"`
	// Error says why the file was refused when not Loaded (the running
	// version stays).
	Error string `json:"error,omitempty"`
}

// ReloadResult is the reply to reload and load.
type ReloadResult struct {
	Plugins []PluginLoad `json:"plugins"`
}

// NewReloadRequest builds reload.
func NewReloadRequest(adminToken string) *Request {
	r := newRequest("reload")
	r.Args["admin_token"] = adminToken
	return r
}

// NewLoadRequest builds load of the plugin file at path (on the daemon's
// machine).
func NewLoadRequest(path, adminToken string) *Request {
	r := newRequest("load")
	r.Args["path"] = path
	r.Args["admin_token"] = adminToken
	return r
}

// ParseReloadReply parses the reply to reload request id.
func ParseReloadReply(id uint64, b []byte) (*ReloadResult, error) {
	return parseReloadReply("reload", id, b)
}

// ParseLoadReply parses the reply to load request id.
func ParseLoadReply(id uint64, b []byte) (*ReloadResult, error) {
	return parseReloadReply("load", id, b)
}

func parseReloadReply(op string, id uint64, b []byte) (*ReloadResult, error) {
	return parseReply(op, id, b, func(m map[string]any) (*ReloadResult, error) {
		raw, err := getArray(m, "plugins")
		if err != nil {
			return nil, err
		}
		res := &ReloadResult{Plugins: make([]PluginLoad, len(raw))}
		for i, v := range raw {
			pm, ok := v.(map[string]any)
			if !ok {
				return nil, wrongType(fmt.Sprintf("plugins[%d]", i), v, "map")
			}
			if res.Plugins[i], err = parsePluginLoad(pm); err != nil {
				return nil, fmt.Errorf("plugins[%d]: %w", i, err)
			}
		}
		return res, nil
	})
}

func parsePluginLoad(m map[string]any) (PluginLoad, error) {
	var p PluginLoad
	var err error
	if p.Path, err = getString(m, "path"); err != nil {
		return p, err
	}
	if p.Loaded, err = getBool(m, "loaded"); err != nil {
		return p, err
	}
	if !p.Loaded {
		p.Error, err = getString(m, "error")
		return p, err
	}
	if p.ID, err = getString(m, "id"); err != nil {
		return p, err
	}
	p.Version, err = getString(m, "version")
	return p, err
}

// Reload makes the daemon rescan its plugin directories and load every new
// or changed plugin file as the current version of its id; sessions move
// to it between two of their steps. It returns one entry per file tried.
func (c *Client) Reload(ctx context.Context, adminToken string) ([]PluginLoad, error) {
	res, err := call(ctx, c, NewReloadRequest(adminToken), ParseReloadReply)
	if err != nil {
		return nil, err
	}
	return res.Plugins, nil
}

// DropResult is the reply to drop: no keys.
type DropResult struct{}

// NewDropRequest builds drop of the session named session.
func NewDropRequest(session, adminToken string) *Request {
	r := newRequest("drop")
	r.Args["session"] = session
	r.Args["admin_token"] = adminToken
	return r
}

// ParseDropReply parses the reply to drop request id.
func ParseDropReply(id uint64, b []byte) (*DropResult, error) {
	return parseReply("drop", id, b, func(map[string]any) (*DropResult, error) {
		return &DropResult{}, nil
	})
}

// ShutdownResult is the reply to shutdown: no keys.
type ShutdownResult struct{}

// NewShutdownRequest builds shutdown.
func NewShutdownRequest(adminToken string) *Request {
	r := newRequest("shutdown")
	r.Args["admin_token"] = adminToken
	return r
}

// ParseShutdownReply parses the reply to shutdown request id.
func ParseShutdownReply(id uint64, b []byte) (*ShutdownResult, error) {
	return parseReply("shutdown", id, b, func(map[string]any) (*ShutdownResult, error) {
		return &ShutdownResult{}, nil
	})
}

// Drop closes the session named session as CloseSession does, without its
// token (one whose token was lost). An unknown name is ErrUnknownSession.
func (c *Client) Drop(ctx context.Context, session, adminToken string) error {
	_, err := call(ctx, c, NewDropRequest(session, adminToken), ParseDropReply)
	return err
}

// Shutdown stops the daemon as SIGTERM does: it answers, finishes the
// requests being applied, snapshots changed sessions and exits 0.
func (c *Client) Shutdown(ctx context.Context, adminToken string) error {
	_, err := call(ctx, c, NewShutdownRequest(adminToken), ParseShutdownReply)
	return err
}

// Load loads the plugin file at path (on the daemon's machine) as Reload
// loads a changed one. A refused file is ErrPlugin.
func (c *Client) Load(ctx context.Context, path, adminToken string) ([]PluginLoad, error) {
	res, err := call(ctx, c, NewLoadRequest(path, adminToken), ParseLoadReply)
	if err != nil {
		return nil, err
	}
	return res.Plugins, nil
}
