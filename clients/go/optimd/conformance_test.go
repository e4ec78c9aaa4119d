package optimd_test

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/vmihailenco/msgpack/v5"

	"github.com/optimd/optimd/clients/go/optimd"
)

// The conformance vectors of tests/protocol/vectors.json: requests this
// client must encode to the given msgpack value, and replies it must parse
// to the given result, server error, or protocol error.

type vectorFile struct {
	Protocol int             `json:"protocol"`
	Requests []requestVector `json:"requests"`
	Replies  []replyVector   `json:"replies"`
}

type requestVector struct {
	Name    string         `json:"name"`
	Call    map[string]any `json:"call"`
	Msgpack string         `json:"msgpack"`
}

type replyVector struct {
	Name      string         `json:"name"`
	Op        string         `json:"op"`
	RequestID uint64         `json:"request_id"`
	Msgpack   string         `json:"msgpack"`
	Expect    map[string]any `json:"expect"`
}

// vectorsPath is $OPTIMD_SOURCE_DIR/tests/protocol/vectors.json, or the
// same file found from this package's directory (clients/go/optimd).
func vectorsPath() string {
	if src := os.Getenv("OPTIMD_SOURCE_DIR"); src != "" {
		return filepath.Join(src, "tests", "protocol", "vectors.json")
	}
	return filepath.Join("..", "..", "..", "tests", "protocol", "vectors.json")
}

func loadVectors(t *testing.T, path string) *vectorFile {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("conformance vectors: %v", err)
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	var vf vectorFile
	if err := dec.Decode(&vf); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	if vf.Protocol != optimd.ProtocolVersion {
		t.Fatalf("%s: protocol %d, this client speaks %d", path, vf.Protocol, optimd.ProtocolVersion)
	}
	if len(vf.Requests) == 0 || len(vf.Replies) == 0 {
		t.Fatalf("%s: no vectors", path)
	}
	return &vf
}

func TestConformance(t *testing.T) {
	path := vectorsPath()
	if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) && os.Getenv("OPTIMD_SOURCE_DIR") == "" {
		t.Skipf("%s does not exist", path)
	}
	runVectors(t, loadVectors(t, path))
}

// TestConformanceSample runs the runner itself on a small file written
// from the protocol page, so that it is exercised whatever the shared file
// holds.
func TestConformanceSample(t *testing.T) {
	runVectors(t, loadVectors(t, filepath.Join("testdata", "vectors-sample.json")))
}

func runVectors(t *testing.T, vf *vectorFile) {
	for _, v := range vf.Requests {
		t.Run("request/"+v.Name, func(t *testing.T) { checkRequest(t, v) })
	}
	for _, v := range vf.Replies {
		t.Run("reply/"+v.Name, func(t *testing.T) { checkReply(t, v) })
	}
}

// --- requests ---

func checkRequest(t *testing.T, v requestVector) {
	c := callArgs{t: t, m: v.Call}
	req := buildRequest(&c)
	c.done()
	if t.Failed() {
		return
	}
	got, err := req.Encode()
	if err != nil {
		t.Fatalf("encode: %v", err)
	}
	want, err := hex.DecodeString(v.Msgpack)
	if err != nil {
		t.Fatalf("msgpack hex: %v", err)
	}
	gv, err := normalMsgpack(got)
	if err != nil {
		t.Fatalf("our encoding does not decode: %v", err)
	}
	wv, err := normalMsgpack(want)
	if err != nil {
		t.Fatalf("the vector's msgpack does not decode: %v", err)
	}
	delete(gv.(map[string]any), "id")
	delete(wv.(map[string]any), "id")
	if !reflect.DeepEqual(gv, wv) {
		t.Fatalf("request differs\n got: %#v\nwant: %#v", gv, wv)
	}
}

// buildRequest maps a vector's call (the protocol's keys) onto the public
// request builders.
func buildRequest(c *callArgs) *optimd.Request {
	op := c.str("op")
	session := func() optimd.Session { return optimd.Session{Name: c.str("session"), Token: c.str("token")} }
	switch op {
	case "hello":
		return optimd.NewHelloRequest(c.str("client"))
	case "plugins":
		return optimd.NewPluginsRequest()
	case "sessions":
		return optimd.NewSessionsRequest()
	case "open":
		return optimd.NewOpenRequest(c.str("session"), c.str("optimizer"), &optimd.OpenOptions{
			Hparams: c.hparams("hparams"), Scheduler: c.str("scheduler"),
			SchedHparams: c.hparams("sched_hparams"), Durability: optimd.Durability(c.str("durability")),
			OpenKey: c.str("open_key"), Groups: c.groups("groups"),
			Schedulers: c.schedulers("schedulers"), Milestones: c.ints("milestones"),
			Lookahead: c.lookahead("lookahead"),
		})
	case "attach":
		return optimd.NewAttachRequest(session())
	case "info":
		return optimd.NewInfoRequest(session(), c.str("client"))
	case "hparams":
		return optimd.NewHparamsRequest(session())
	case "set_hparams":
		if _, ok := c.m["group"]; ok {
			return optimd.NewSetGroupHparamsRequest(session(), c.str("group"), c.hparams("hparams"))
		}
		return optimd.NewSetHparamsRequest(session(), c.hparams("hparams"))
	case "close":
		return optimd.NewCloseRequest(session())
	case "export":
		return optimd.NewExportRequest(session())
	case "register":
		if _, ok := c.m["group"]; ok {
			return optimd.NewRegisterInGroupRequest(session(), c.str("group"), c.tensors("params"))
		}
		return optimd.NewRegisterRequest(session(), c.tensors("params"))
	case "step":
		ret := true
		if _, ok := c.m["return"]; ok {
			ret = c.boolean("return")
		}
		return optimd.NewStepRequest(session(), c.tensors("grads"), &optimd.StepOptions{
			NoReturn: !ret, Seq: c.uint("seq"), Client: c.str("client"),
			ClipValue: c.float("clip_value"), ClipNorm: c.clipNorm("clip_norm"),
		})
	case "observe":
		return optimd.NewObserveRequest(session(), c.float("metric"), c.str("group"))
	case "switch":
		return optimd.NewSwitchRequest(session(), c.str("optimizer"), c.hparams("hparams"))
	case "reload":
		return optimd.NewReloadRequest(c.str("admin_token"))
	case "load":
		return optimd.NewLoadRequest(c.str("path"), c.str("admin_token"))
	case "drop":
		return optimd.NewDropRequest(c.str("session"), c.str("admin_token"))
	case "shutdown":
		return optimd.NewShutdownRequest(c.str("admin_token"))
	case "pull":
		return optimd.NewPullRequest(session(), c.strings("names"))
	case "state":
		return optimd.NewStateRequest(session(), c.strings("names"))
	case "import":
		return optimd.NewImportRequest(c.bin("snapshot"), &optimd.ImportOptions{
			Session: c.str("session"), Durability: optimd.Durability(c.str("durability")),
		})
	}
	c.t.Fatalf("call op %q has no builder", op)
	return nil
}

// callArgs reads a call's keys, remembering which were used so that a key
// the mapping does not know fails the vector instead of being dropped.
type callArgs struct {
	t    *testing.T
	m    map[string]any
	used map[string]bool
}

func (c *callArgs) get(key string) (any, bool) {
	if c.used == nil {
		c.used = map[string]bool{}
	}
	c.used[key] = true
	v, ok := c.m[key]
	return v, ok && v != nil
}

func (c *callArgs) done() {
	for k := range c.m {
		if !c.used[k] {
			c.t.Errorf("call key %q is not mapped to the client's API", k)
		}
	}
}

func (c *callArgs) str(key string) string {
	v, ok := c.get(key)
	if !ok {
		return ""
	}
	s, isStr := v.(string)
	if !isStr {
		c.t.Fatalf("call key %q: %T", key, v)
	}
	return s
}

func (c *callArgs) boolean(key string) bool {
	v, _ := c.get(key)
	b, ok := v.(bool)
	if !ok {
		c.t.Fatalf("call key %q: %T", key, v)
	}
	return b
}

func (c *callArgs) float(key string) float64 {
	v, ok := c.get(key)
	if !ok {
		return 0
	}
	n, isNum := v.(json.Number)
	if !isNum {
		c.t.Fatalf("call key %q: %T", key, v)
	}
	f, err := n.Float64()
	if err != nil {
		c.t.Fatalf("call key %q: %v", key, err)
	}
	return f
}

// sub reads a nested map of the call with the same bookkeeping: its keys
// must all be mapped too.
func (c *callArgs) sub(key string, v any) *callArgs {
	m, ok := v.(map[string]any)
	if !ok {
		c.t.Fatalf("call key %q: %T, not a map", key, v)
	}
	return &callArgs{t: c.t, m: m}
}

func (c *callArgs) groups(key string) []optimd.GroupSpec {
	v, ok := c.get(key)
	if !ok {
		return nil
	}
	a, isArr := v.([]any)
	if !isArr {
		c.t.Fatalf("call key %q: %T", key, v)
	}
	out := make([]optimd.GroupSpec, len(a))
	for i, e := range a {
		g := c.sub(fmt.Sprintf("%s[%d]", key, i), e)
		out[i] = optimd.GroupSpec{Name: g.str("name"), Hparams: g.hparams("hparams"),
			SchedHparams: g.hparams("sched_hparams"), Schedulers: g.schedulers("schedulers"),
			Milestones: g.ints("milestones")}
		// The protocol tells an absent scheduler (the default group's)
		// from a nil one (none).
		if sv, present := g.m["scheduler"]; present && sv == nil {
			g.get("scheduler")
			out[i].NoScheduler = true
		} else {
			out[i].Scheduler = g.str("scheduler")
		}
		g.done()
	}
	return out
}

func (c *callArgs) schedulers(key string) []optimd.SchedulerSpec {
	v, ok := c.get(key)
	if !ok {
		return nil
	}
	a, isArr := v.([]any)
	if !isArr {
		c.t.Fatalf("call key %q: %T", key, v)
	}
	out := make([]optimd.SchedulerSpec, len(a))
	for i, e := range a {
		s := c.sub(fmt.Sprintf("%s[%d]", key, i), e)
		out[i] = optimd.SchedulerSpec{Scheduler: s.str("scheduler"), SchedHparams: s.hparams("sched_hparams")}
		s.done()
	}
	return out
}

func (c *callArgs) ints(key string) []int {
	v, ok := c.get(key)
	if !ok {
		return nil
	}
	a, isArr := v.([]any)
	if !isArr {
		c.t.Fatalf("call key %q: %T", key, v)
	}
	out := make([]int, len(a))
	for i, e := range a {
		n, err := parseUint(e)
		if err != nil {
			c.t.Fatalf("call key %q[%d]: %v", key, i, err)
		}
		out[i] = int(n)
	}
	return out
}

func (c *callArgs) lookahead(key string) *optimd.Lookahead {
	v, ok := c.get(key)
	if !ok {
		return nil
	}
	l := c.sub(key, v)
	la := &optimd.Lookahead{K: int64(l.uint("k")), Alpha: l.float("alpha")}
	l.done()
	return la
}

func (c *callArgs) clipNorm(key string) *optimd.ClipNorm {
	v, ok := c.get(key)
	if !ok {
		return nil
	}
	n := c.sub(key, v)
	cn := &optimd.ClipNorm{MaxNorm: n.float("max_norm"), NormType: n.float("norm_type")}
	if _, ok := n.m["per_group"]; ok {
		cn.PerGroup = n.boolean("per_group")
	}
	n.done()
	return cn
}

func (c *callArgs) uint(key string) uint64 {
	v, ok := c.get(key)
	if !ok {
		return 0
	}
	n, err := parseUint(v)
	if err != nil {
		c.t.Fatalf("call key %q: %v", key, err)
	}
	return n
}

func (c *callArgs) bin(key string) []byte {
	b, err := hex.DecodeString(c.str(key))
	if err != nil {
		c.t.Fatalf("call key %q: %v", key, err)
	}
	return b
}

func (c *callArgs) strings(key string) []string {
	v, ok := c.get(key)
	if !ok {
		return nil
	}
	a, isArr := v.([]any)
	if !isArr {
		c.t.Fatalf("call key %q: %T", key, v)
	}
	out := make([]string, len(a))
	for i, e := range a {
		s, isStr := e.(string)
		if !isStr {
			c.t.Fatalf("call key %q[%d]: %T", key, i, e)
		}
		out[i] = s
	}
	return out
}

// hparams: JSON integers stay integers, other numbers are floats.
func (c *callArgs) hparams(key string) optimd.Hparams {
	v, ok := c.get(key)
	if !ok {
		return nil
	}
	m, isMap := v.(map[string]any)
	if !isMap {
		c.t.Fatalf("call key %q: %T", key, v)
	}
	hp := optimd.Hparams{}
	for k, x := range m {
		switch x := x.(type) {
		case json.Number:
			if i, err := x.Int64(); err == nil && !strings.ContainsAny(x.String(), ".eE") {
				hp[k] = i
			} else if f, err := x.Float64(); err == nil {
				hp[k] = f
			} else {
				c.t.Fatalf("hparam %q: %v", k, err)
			}
		default:
			hp[k] = x
		}
	}
	return hp
}

func (c *callArgs) tensors(key string) map[string]optimd.Tensor {
	v, ok := c.get(key)
	if !ok {
		return nil
	}
	m, isMap := v.(map[string]any)
	if !isMap {
		c.t.Fatalf("call key %q: %T", key, v)
	}
	out := make(map[string]optimd.Tensor, len(m))
	for name, tv := range m {
		tm, _ := tv.(map[string]any)
		dt, _ := tm["dtype"].(string)
		data, err := hex.DecodeString(fmt.Sprint(tm["data"]))
		if err != nil {
			c.t.Fatalf("tensor %q data: %v", name, err)
		}
		rawShape, _ := tm["shape"].([]any)
		shape := make([]uint64, len(rawShape))
		for i, d := range rawShape {
			if shape[i], err = parseUint(d); err != nil {
				c.t.Fatalf("tensor %q shape: %v", name, err)
			}
		}
		out[name] = optimd.Tensor{DType: optimd.DType(dt), Shape: shape, Data: data}
	}
	return out
}

func parseUint(v any) (uint64, error) {
	n, ok := v.(json.Number)
	if !ok {
		return 0, fmt.Errorf("%T is not a number", v)
	}
	var u uint64
	_, err := fmt.Sscan(n.String(), &u)
	return u, err
}

// normalMsgpack decodes with the msgpack library's generic decoder and
// folds what the comparison ignores: integer width (all integers become
// int64, or uint64 above MaxInt64) and float32 vs float64 (float64).
func normalMsgpack(b []byte) (any, error) {
	var v any
	if err := msgpack.Unmarshal(b, &v); err != nil {
		return nil, err
	}
	return normal(v), nil
}

func normal(v any) any {
	switch x := v.(type) {
	case int8:
		return int64(x)
	case int16:
		return int64(x)
	case int32:
		return int64(x)
	case int64:
		return x
	case uint8:
		return int64(x)
	case uint16:
		return int64(x)
	case uint32:
		return int64(x)
	case uint64:
		if x <= math.MaxInt64 {
			return int64(x)
		}
		return x
	case float32:
		return float64(x)
	case []any:
		for i := range x {
			x[i] = normal(x[i])
		}
		return x
	case map[string]any:
		for k := range x {
			x[k] = normal(x[k])
		}
		return x
	}
	return v
}

// --- replies ---

// replyParsers parses a reply for each op; the result is compared through
// canonical().
var replyParsers = map[string]func(id uint64, b []byte) (any, error){
	"hello":       wrapParse(optimd.ParseHelloReply),
	"plugins":     wrapParse(optimd.ParsePluginsReply),
	"sessions":    wrapParse(optimd.ParseSessionsReply),
	"open":        wrapParse(optimd.ParseOpenReply),
	"attach":      wrapParse(optimd.ParseAttachReply),
	"info":        wrapParse(optimd.ParseInfoReply),
	"hparams":     wrapParse(optimd.ParseHparamsReply),
	"set_hparams": wrapParse(optimd.ParseSetHparamsReply),
	"close":       wrapParse(optimd.ParseCloseReply),
	"register":    wrapParse(optimd.ParseRegisterReply),
	"step":        wrapParse(optimd.ParseStepReply),
	"pull":        wrapParse(optimd.ParsePullReply),
	"state":       wrapParse(optimd.ParseStateReply),
	"export":      wrapParse(optimd.ParseExportReply),
	"import":      wrapParse(optimd.ParseImportReply),
	"observe":     wrapParse(optimd.ParseObserveReply),
	"switch":      wrapParse(optimd.ParseSwitchReply),
	"reload":      wrapParse(optimd.ParseReloadReply),
	"load":        wrapParse(optimd.ParseLoadReply),
	"drop":        wrapParse(optimd.ParseDropReply),
	"shutdown":    wrapParse(optimd.ParseShutdownReply),
}

func wrapParse[T any](f func(uint64, []byte) (T, error)) func(uint64, []byte) (any, error) {
	return func(id uint64, b []byte) (any, error) { return f(id, b) }
}

func checkReply(t *testing.T, v replyVector) {
	parse, ok := replyParsers[v.Op]
	if !ok {
		t.Fatalf("no parser for op %q", v.Op)
	}
	b, err := hex.DecodeString(v.Msgpack)
	if err != nil {
		t.Fatalf("msgpack hex: %v", err)
	}
	var res any
	func() {
		defer func() {
			if p := recover(); p != nil {
				t.Fatalf("the parser panicked: %v", p)
			}
		}()
		res, err = parse(v.RequestID, b)
	}()
	switch {
	case v.Expect["invalid"] == true:
		if !errors.Is(err, optimd.ErrProtocol) {
			t.Fatalf("got %v (result %+v), want a protocol error", err, res)
		}
		var se *optimd.ServerError
		if errors.As(err, &se) {
			t.Fatalf("a protocol error is also a server error: %v", err)
		}
	case v.Expect["ok"] == false:
		code, err2 := parseUint(v.Expect["code"])
		if err2 != nil {
			t.Fatalf("expect.code: %v", err2)
		}
		var se *optimd.ServerError
		if !errors.As(err, &se) {
			t.Fatalf("got %v, want server error %d", err, code)
		}
		if uint64(se.Code) != code || se.Name != v.Expect["error"] {
			t.Fatalf("got %d %q, want %v %v", se.Code, se.Name, code, v.Expect["error"])
		}
	case v.Expect["ok"] == true:
		if err != nil {
			t.Fatalf("parse: %v", err)
		}
		want, _ := v.Expect["result"].(map[string]any)
		got := canonical(reflect.ValueOf(res))
		if diff := compareJSON("result", want, got); diff != "" {
			t.Fatalf("%s\n got: %v\nwant: %v", diff, got, want)
		}
	default:
		t.Fatalf("expect has neither ok nor invalid: %v", v.Expect)
	}
}

var tensorType = reflect.TypeOf(optimd.Tensor{})

// canonical turns a parsed result into the JSON shapes of the vectors:
// struct fields under their json tags (embedded structs flattened), nil
// pointers, slices and maps and omitempty zero values left out (an absent
// key), tensors as {dtype, shape, data-hex}, bins as hex, numbers as
// float64.
func canonical(v reflect.Value) any {
	switch v.Kind() {
	case reflect.Interface, reflect.Pointer:
		if v.IsNil() {
			return nil
		}
		return canonical(v.Elem())
	}
	if v.Type() == tensorType {
		t := v.Interface().(optimd.Tensor)
		shape := make([]any, len(t.Shape))
		for i, d := range t.Shape {
			shape[i] = float64(d)
		}
		return map[string]any{"dtype": string(t.DType), "shape": shape, "data": hex.EncodeToString(t.Data)}
	}
	switch v.Kind() {
	case reflect.Struct:
		out := map[string]any{}
		canonicalFields(v, out)
		return out
	case reflect.Map:
		out := map[string]any{}
		for _, k := range v.MapKeys() {
			out[k.String()] = canonical(v.MapIndex(k))
		}
		return out
	case reflect.Slice:
		if v.Type().Elem().Kind() == reflect.Uint8 {
			return hex.EncodeToString(v.Bytes())
		}
		fallthrough
	case reflect.Array:
		out := make([]any, v.Len())
		for i := range out {
			out[i] = canonical(v.Index(i))
		}
		return out
	case reflect.String:
		return v.String()
	case reflect.Bool:
		return v.Bool()
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		return float64(v.Int())
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return float64(v.Uint())
	case reflect.Float32, reflect.Float64:
		return v.Float()
	}
	panic("canonical: unhandled kind " + v.Kind().String())
}

func canonicalFields(v reflect.Value, out map[string]any) {
	for i := 0; i < v.NumField(); i++ {
		f := v.Type().Field(i)
		fv := v.Field(i)
		if f.Anonymous {
			canonicalFields(fv, out)
			continue
		}
		name, opts, _ := strings.Cut(f.Tag.Get("json"), ",")
		if name == "" || name == "-" {
			continue
		}
		// omitempty marks a key older daemons leave out (testdata's
		// sample predates it).
		if opts == "omitempty" && fv.IsZero() {
			continue
		}
		switch fv.Kind() {
		case reflect.Pointer, reflect.Slice, reflect.Map, reflect.Interface:
			if fv.IsNil() && fv.Kind() != reflect.Interface {
				continue
			}
		}
		out[name] = canonical(fv)
	}
}

// compareJSON compares a vector's expected value (json.Number numbers) with
// a canonical result; "" when equal. The client reports a nil string (no
// scheduler, no enabled_by) as "", so expected nil matches "".
func compareJSON(path string, want, got any) string {
	switch w := want.(type) {
	case nil:
		if got == nil || got == "" {
			return ""
		}
	case json.Number:
		wf, err := w.Float64()
		if g, ok := got.(float64); ok && err == nil && (g == wf || (math.IsNaN(g) && math.IsNaN(wf))) {
			return ""
		}
	case map[string]any:
		g, ok := got.(map[string]any)
		if !ok {
			break
		}
		for k := range g {
			if _, ok := w[k]; !ok {
				return fmt.Sprintf("%s.%s: unexpected key (value %v)", path, k, g[k])
			}
		}
		for k, wv := range w {
			gv, ok := g[k]
			// A nil pointer (lookahead off) is left out of the canonical
			// form, as an absent key.
			if !ok && wv == nil {
				continue
			}
			if !ok {
				return fmt.Sprintf("%s.%s: missing", path, k)
			}
			if d := compareJSON(path+"."+k, wv, gv); d != "" {
				return d
			}
		}
		return ""
	case []any:
		g, ok := got.([]any)
		if !ok || len(g) != len(w) {
			break
		}
		for i := range w {
			if d := compareJSON(fmt.Sprintf("%s[%d]", path, i), w[i], g[i]); d != "" {
				return d
			}
		}
		return ""
	default:
		if reflect.DeepEqual(want, got) {
			return ""
		}
	}
	return fmt.Sprintf("%s: got %#v, want %#v", path, got, want)
}
