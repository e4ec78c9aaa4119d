package optimd

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"strings"

	"golang.org/x/crypto/blake2b"
)

// Cluster: one session spread over several daemons, the Go counterpart of
// the Python client's optimd.Cluster. Both place a parameter by the same
// rule (Place), so Go and Python workers listing the same servers agree.

// RendezvousWeight is the weight of parameter name on server url: the
// 64-bit BLAKE2b digest (digest size 8, not a truncated longer one) of url,
// a NUL byte and name, read big-endian.
func RendezvousWeight(url, name string) uint64 {
	h, err := blake2b.New(8, nil)
	if err != nil {
		// Only a size outside 1..64 or a key over 64 bytes fails.
		panic(err)
	}
	h.Write([]byte(url))
	h.Write([]byte{0})
	h.Write([]byte(name))
	return binary.BigEndian.Uint64(h.Sum(nil))
}

// Place returns the URL among urls that holds parameter name: the one with
// the highest RendezvousWeight, a tie going to the greater URL (byte-wise).
// It depends on the set of URLs only, not their order, and adding a URL
// moves only the names whose weight on the new one beats their old
// maximum, all to the new one. It returns "" for no URLs.
func Place(name string, urls []string) string {
	best, bestW := "", uint64(0)
	for i, url := range urls {
		w := RendezvousWeight(url, name)
		if i == 0 || w > bestW || (w == bestW && url > best) {
			best, bestW = url, w
		}
	}
	return best
}

// ErrClusterClipNorm is returned by Cluster.Step with ClipNorm and more
// than one server: each server sees only its own gradients, so none can
// compute the global norm. Clip in the worker (or use ClipValue).
var ErrClusterClipNorm = errors.New("optimd: cluster: ClipNorm needs the norm over every gradient, " +
	"and each server sees only its own: clip before Step (or use ClipValue) with several servers")

// ClusterError is a Cluster call that failed on one server. Err is that
// server's error (a *ServerError, a transport or context error), so
// errors.Is(err, ErrNonfinite) and errors.As(err, &serverErr) still work.
type ClusterError struct {
	Op  string // the cluster method: "open", "register", "step", ...
	URL string // the server that failed
	// Applied are the servers, in the cluster's order, that had already
	// applied this call (for register, step, join and leave); the servers after URL
	// were not asked.
	Applied []string
	Err     error
}

func (e *ClusterError) Error() string {
	applied := "none"
	if len(e.Applied) > 0 {
		applied = strings.Join(e.Applied, ", ")
	}
	return fmt.Sprintf("optimd: cluster %s on %s (already applied on: %s): %v", e.Op, e.URL, applied, e.Err)
}

func (e *ClusterError) Unwrap() error { return e.Err }

// ClusterSession is a session opened on every server of a Cluster: its
// name and each server's Session (with that server's token), by URL. Keep
// it whole to use the session again.
type ClusterSession struct {
	Name     string
	Sessions map[string]Session
}

// On is this session on server url.
func (s *ClusterSession) On(url string) Session { return s.Sessions[url] }

// ClusterStepResult is a cluster step: the updated parameters of every
// server merged (nil with NoReturn), and each server's StepResult by URL.
type ClusterStepResult struct {
	Params  map[string]Tensor
	Results map[string]*StepResult
	first   string
}

// Steps, LR and NextLR are the first server's (in the cluster's order);
// every server steps on every call, so they agree unless an earlier step
// failed part-way.
func (r *ClusterStepResult) Steps() uint64   { return r.Results[r.first].Steps }
func (r *ClusterStepResult) LR() float64     { return r.Results[r.first].LR }
func (r *ClusterStepResult) NextLR() float64 { return r.Results[r.first].NextLR }

// Duplicate is true when every server had already applied this sequenced
// step.
func (r *ClusterStepResult) Duplicate() bool {
	for _, res := range r.Results {
		if !res.Duplicate {
			return false
		}
	}
	return true
}

// Cluster is one Client per server and the session ops spread over them
// by Place.
//
// Requests go to the servers one at a time, in the order of the URLs, and
// a server holding none of the parameters a call names gets no request,
// except for Step, which every server gets (with no gradients if it holds
// none of them) so that step counts and server-side schedules keep pace
// everywhere, as one server's would.
//
// Not shared across servers: global-norm clipping (ErrClusterClipNorm);
// atomicity (a call is one request per server: on a failure the servers
// before the failing one have applied it, the later ones were not asked,
// and the ClusterError says which; steps sent with Seq and Client can be
// retried, each server's session remembering the sequence numbers it
// applied); optimizers that couple parameters (none bundled do) would see
// only each server's share.
type Cluster struct {
	urls    []string
	clients map[string]*Client
}

// NewCluster dials every URL with opts (which may be nil). It refuses an
// empty list and a URL listed twice. ctx cut short stops it between dials.
func NewCluster(ctx context.Context, urls []string, opts *Options) (*Cluster, error) {
	if len(urls) == 0 {
		return nil, errors.New("optimd: a cluster needs at least one server URL")
	}
	seen := make(map[string]bool, len(urls))
	for _, u := range urls {
		if seen[u] {
			return nil, fmt.Errorf("optimd: cluster: server URL listed twice: %s", u)
		}
		seen[u] = true
	}
	c := &Cluster{urls: slices.Clone(urls), clients: make(map[string]*Client, len(urls))}
	for _, u := range urls {
		if err := ctx.Err(); err != nil {
			c.Close()
			return nil, err
		}
		cl, err := Dial(u, opts)
		if err != nil {
			c.Close()
			return nil, err
		}
		c.clients[u] = cl
	}
	return c, nil
}

// Close closes every connection; the sessions stay on the daemons.
func (c *Cluster) Close() error {
	var first error
	for _, u := range c.urls {
		if cl := c.clients[u]; cl != nil {
			if err := cl.Close(); err != nil && first == nil {
				first = err
			}
		}
	}
	return first
}

// URLs are the servers, in the order given to NewCluster.
func (c *Cluster) URLs() []string { return slices.Clone(c.urls) }

// Client is the connection to server url.
func (c *Cluster) Client(url string) *Client { return c.clients[url] }

// Placement is the URL of the server that holds parameter name.
func (c *Cluster) Placement(name string) string { return Place(name, c.urls) }

// split cuts values into one map per server holding any of them; order
// lists those servers in the cluster's order.
func split[T any](c *Cluster, values map[string]T) (parts map[string]map[string]T, order []string) {
	parts = make(map[string]map[string]T)
	for name, v := range values {
		u := c.Placement(name)
		if parts[u] == nil {
			parts[u] = make(map[string]T)
		}
		parts[u][name] = v
	}
	for _, u := range c.urls {
		if parts[u] != nil {
			order = append(order, u)
		}
	}
	return parts, order
}

func (c *Cluster) check(s *ClusterSession) error {
	ok := len(s.Sessions) == len(c.urls)
	for _, u := range c.urls {
		if _, has := s.Sessions[u]; !has {
			ok = false
		}
	}
	if !ok {
		got := make([]string, 0, len(s.Sessions))
		for u := range s.Sessions {
			got = append(got, u)
		}
		slices.Sort(got)
		want := slices.Clone(c.urls)
		slices.Sort(want)
		return fmt.Errorf("optimd: cluster: session %q was opened on %v, not on this cluster's %v", s.Name, got, want)
	}
	return nil
}

// Open opens session name on every server, as Client.Open does (with
// opts.Workers, every server's share has the same workers: see Join). If
// one server refuses, the sessions already opened on the others are closed
// again (best effort) and its error comes back as a *ClusterError.
func (c *Cluster) Open(ctx context.Context, name, optimizer string, opts *OpenOptions) (*ClusterSession, error) {
	s := &ClusterSession{Name: name, Sessions: make(map[string]Session, len(c.urls))}
	for _, u := range c.urls {
		res, err := c.clients[u].Open(ctx, name, optimizer, opts)
		if err != nil {
			for _, done := range c.urls {
				if sess, ok := s.Sessions[done]; ok {
					_ = c.clients[done].CloseSession(ctx, sess)
				}
			}
			return nil, &ClusterError{Op: "open", URL: u, Err: err}
		}
		s.Sessions[u] = res.Session
	}
	return s, nil
}

// Attach checks the token on every server; each server's info, by URL.
func (c *Cluster) Attach(ctx context.Context, s *ClusterSession) (map[string]*SessionInfo, error) {
	return c.infos(ctx, s, "attach", func(u string) (*SessionInfo, error) {
		return c.clients[u].Attach(ctx, s.Sessions[u])
	})
}

// Info is each server's Client.Info of its share, by URL.
func (c *Cluster) Info(ctx context.Context, s *ClusterSession, client string) (map[string]*SessionInfo, error) {
	return c.infos(ctx, s, "info", func(u string) (*SessionInfo, error) {
		return c.clients[u].Info(ctx, s.Sessions[u], client)
	})
}

func (c *Cluster) infos(_ context.Context, s *ClusterSession, op string, f func(u string) (*SessionInfo, error)) (map[string]*SessionInfo, error) {
	if err := c.check(s); err != nil {
		return nil, err
	}
	out := make(map[string]*SessionInfo, len(c.urls))
	for _, u := range c.urls {
		info, err := f(u)
		if err != nil {
			return nil, &ClusterError{Op: op, URL: u, Err: err}
		}
		out[u] = info
	}
	return out, nil
}

// CloseSession closes the session on every server; after trying them all,
// it returns the first error (a *ClusterError), if any.
func (c *Cluster) CloseSession(ctx context.Context, s *ClusterSession) error {
	if err := c.check(s); err != nil {
		return err
	}
	var first error
	for _, u := range c.urls {
		if err := c.clients[u].CloseSession(ctx, s.Sessions[u]); err != nil && first == nil {
			first = &ClusterError{Op: "close", URL: u, Err: err}
		}
	}
	return first
}

// Register registers each parameter on its server (default group), one
// request per server holding any; it returns the count. A refusal leaves
// the earlier servers' parameters registered (ClusterError.Applied).
func (c *Cluster) Register(ctx context.Context, s *ClusterSession, params map[string]Tensor) (uint64, error) {
	return c.RegisterInGroup(ctx, s, "", params)
}

// RegisterInGroup is Register into group ("" or DefaultGroup: the
// default group), as Client.RegisterInGroup.
func (c *Cluster) RegisterInGroup(ctx context.Context, s *ClusterSession, group string, params map[string]Tensor) (uint64, error) {
	if err := c.check(s); err != nil {
		return 0, err
	}
	parts, order := split(c, params)
	var count uint64
	var applied []string
	for _, u := range order {
		var n uint64
		var err error
		if group == "" {
			n, err = c.clients[u].Register(ctx, s.Sessions[u], parts[u])
		} else {
			n, err = c.clients[u].RegisterInGroup(ctx, s.Sessions[u], group, parts[u])
		}
		if err != nil {
			return count, &ClusterError{Op: "register", URL: u, Applied: applied, Err: err}
		}
		count += n
		applied = append(applied, u)
	}
	return count, nil
}

// Step steps every server with its share of grads (possibly none); the
// updated parameters come back merged. opts (which may be nil) go to every
// server: with Seq and Client each session keeps its own record, so a
// retry after a partial failure is applied only where it was not. ClipNorm
// with more than one server returns ErrClusterClipNorm before sending
// anything.
//
// With opts.Worker, the step is that worker's push to every server, in the
// cluster's order: in a sync session every worker completes the first
// server's round, then the next one's, so each call waits up to the
// session's TimeoutMS per server.
func (c *Cluster) Step(ctx context.Context, s *ClusterSession, grads map[string]Tensor, opts *StepOptions) (*ClusterStepResult, error) {
	if opts != nil && opts.ClipNorm != nil && len(c.urls) > 1 {
		return nil, ErrClusterClipNorm
	}
	if err := c.check(s); err != nil {
		return nil, err
	}
	parts, _ := split(c, grads)
	res := &ClusterStepResult{Results: make(map[string]*StepResult, len(c.urls)), first: c.urls[0]}
	var applied []string
	for _, u := range c.urls {
		part := parts[u]
		if part == nil {
			part = map[string]Tensor{}
		}
		r, err := c.clients[u].Step(ctx, s.Sessions[u], part, opts)
		if err != nil {
			return nil, &ClusterError{Op: "step", URL: u, Applied: applied, Err: err}
		}
		res.Results[u] = r
		applied = append(applied, u)
	}
	if opts == nil || !opts.NoReturn {
		res.Params = make(map[string]Tensor)
		for _, u := range c.urls {
			for name, t := range res.Results[u].Params {
				res.Params[name] = t
			}
		}
	}
	return res, nil
}

// Pull returns the current values of the named parameters (nil: every
// parameter of every server), merged.
func (c *Cluster) Pull(ctx context.Context, s *ClusterSession, names []string) (map[string]Tensor, error) {
	if err := c.check(s); err != nil {
		return nil, err
	}
	out := make(map[string]Tensor)
	pull := func(u string, ns []string) error {
		got, err := c.clients[u].Pull(ctx, s.Sessions[u], ns)
		if err != nil {
			return &ClusterError{Op: "pull", URL: u, Err: err}
		}
		for name, t := range got {
			out[name] = t
		}
		return nil
	}
	if names == nil {
		for _, u := range c.urls {
			if err := pull(u, nil); err != nil {
				return nil, err
			}
		}
		return out, nil
	}
	set := make(map[string]struct{}, len(names))
	for _, n := range names {
		set[n] = struct{}{}
	}
	parts, order := split(c, set)
	for _, u := range order {
		ns := make([]string, 0, len(parts[u]))
		for n := range parts[u] {
			ns = append(ns, n)
		}
		slices.Sort(ns)
		if err := pull(u, ns); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// Join joins worker on every server (in the cluster's order); each
// server's reply, by URL. A refusal leaves it joined on the servers before
// the failing one (ClusterError.Applied).
func (c *Cluster) Join(ctx context.Context, s *ClusterSession, worker string) (map[string]*JoinResult, error) {
	return eachServer(c, s, "join", func(u string) (*JoinResult, error) {
		return c.clients[u].Join(ctx, s.Sessions[u], worker)
	})
}

// Leave removes worker on every server; each server's reply, by URL.
func (c *Cluster) Leave(ctx context.Context, s *ClusterSession, worker string) (map[string]*LeaveResult, error) {
	return eachServer(c, s, "leave", func(u string) (*LeaveResult, error) {
		return c.clients[u].Leave(ctx, s.Sessions[u], worker)
	})
}

// eachServer calls f for every server in order and collects the replies by
// URL; the first failure stops it.
func eachServer[T any](c *Cluster, s *ClusterSession, op string, f func(u string) (T, error)) (map[string]T, error) {
	if err := c.check(s); err != nil {
		return nil, err
	}
	out := make(map[string]T, len(c.urls))
	var applied []string
	for _, u := range c.urls {
		r, err := f(u)
		if err != nil {
			return nil, &ClusterError{Op: op, URL: u, Applied: applied, Err: err}
		}
		out[u] = r
		applied = append(applied, u)
	}
	return out, nil
}
