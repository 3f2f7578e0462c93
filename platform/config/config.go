// Package config loads one typed configuration struct from defaults, a YAML
// file, environment variables and command-line flags, so that every
// credmatrix program reads its settings the same way and every bad value is
// reported with the field it belongs to and the place it came from.
//
// The struct is the schema: fields tagged `cfg:"name"` (and optionally
// `help:"text"`) are settable, nested structs make dotted paths
// (server.tls.cert_file), and whatever the struct holds before Load is the
// default. Precedence, lowest first: default, YAML file, environment, flags.
//
// Config is read in cmd/ only; library packages receive the typed values.
package config

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"reflect"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// ErrHelp is returned by Load when -h or --help was given. The usage text has
// already been written to Options.Usage; callers usually exit with status 0.
var ErrHelp = errors.New("config: help requested")

// Options says where Load finds its inputs. Every input is passed in
// explicitly so that tests (and end-to-end harnesses) never touch the real
// process environment.
type Options struct {
	// Name is the program name shown in the usage text.
	Name string
	// EnvPrefix prefixes every environment variable, e.g. "CREDMATRIX_AUDIT"
	// gives CREDMATRIX_AUDIT_SERVER_LISTEN_ADDR and CREDMATRIX_AUDIT_CONFIG.
	// Empty disables environment variables altogether, because unprefixed
	// names such as CONFIG collide with unrelated software.
	EnvPrefix string
	// Args are the command-line arguments without the program name
	// (os.Args[1:]). Positional arguments are rejected.
	Args []string
	// Getenv looks up an environment variable; nil means an empty
	// environment. An empty value counts as unset.
	Getenv func(string) string
	// Usage receives the help text on -h/--help; nil means os.Stderr.
	Usage io.Writer
}

// FieldError reports a bad configuration value: which field, where the value
// came from, and what is wrong with it.
type FieldError struct {
	// Field is the dotted path of the field, e.g. "server.tls.cert_file".
	Field string
	// Source says where the offending value came from: "default",
	// "file /etc/credmatrix/audit.yaml:12", "env CREDMATRIX_AUDIT_…" or
	// "flag --server.listen-addr". Load fills it in for errors returned by
	// Validate methods that leave it empty.
	Source string
	// Msg says what is wrong, e.g. "must be host:port".
	Msg string
}

// Error formats the error as
// "config: server.listen_addr (from env CREDMATRIX_AUDIT_SERVER_LISTEN_ADDR): must be host:port".
func (e *FieldError) Error() string {
	if e.Source == "" {
		return fmt.Sprintf("config: %s: %s", e.Field, e.Msg)
	}
	return fmt.Sprintf("config: %s (from %s): %s", e.Field, e.Source, e.Msg)
}

// FieldErrors returns every *FieldError in err's tree (through errors.Join and
// %w wrapping), in order, so that callers can report them one per line.
func FieldErrors(err error) []*FieldError {
	var out []*FieldError
	var visit func(error)
	visit = func(e error) {
		switch x := e.(type) {
		case nil:
		case *FieldError:
			out = append(out, x)
		case interface{ Unwrap() []error }:
			for _, c := range x.Unwrap() {
				visit(c)
			}
		case interface{ Unwrap() error }:
			visit(x.Unwrap())
		}
	}
	visit(err)
	return out
}

// validator is implemented by configuration structs that check themselves.
type validator interface {
	Validate() error
}

// node is one tagged field of the target: a struct (with children) or a
// settable leaf.
type node struct {
	name     string // cfg tag
	path     string // dotted path from the root; "" for the root
	help     string
	value    reflect.Value // addressable
	children []*node       // struct nodes only
	leaf     bool
	env      string // environment variable name; "" when env is disabled
	flag     string // flag name without dashes
	def      string // default value as text, for usage
	source   string // where the current value came from
}

func (n *node) child(name string) *node {
	for _, c := range n.children {
		if c.name == name {
			return c
		}
	}
	return nil
}

// Load fills target, a pointer to a struct, from its current values
// (defaults), the YAML file named by --config or <PREFIX>_CONFIG, the
// environment and the flags in o.Args, then calls Validate on every struct in
// the tree that has one (innermost first, target last).
//
// All value errors are collected and returned together (errors.Join); each is
// a *FieldError naming the field and the source of the value. FieldErrors
// returned by a nested struct's Validate have their Field prefixed with that
// struct's path and, when empty, their Source filled in — so a struct such as
// grpcserver.Config validates itself and the message still points at
// "server.listen_addr (from env …)". A parent's Validate therefore need not
// (and should not) call its children's.
func Load(target any, o Options) error {
	rv := reflect.ValueOf(target)
	if rv.Kind() != reflect.Pointer || rv.IsNil() || rv.Elem().Kind() != reflect.Struct {
		return fmt.Errorf("config: target must be a non-nil pointer to a struct, got %T", target)
	}
	root := &node{value: rv.Elem()}
	var leaves []*node
	if err := build(root, o.EnvPrefix, &leaves); err != nil {
		return err
	}
	getenv := o.Getenv
	if getenv == nil || o.EnvPrefix == "" {
		getenv = func(string) string { return "" }
	}
	usage := o.Usage
	if usage == nil {
		usage = os.Stderr
	}

	// Flags are parsed first, to find --config, but applied last.
	type assignment struct {
		n   *node
		raw string
	}
	var assigned []assignment
	var configFlag *string
	fs := flag.NewFlagSet(o.Name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	configFlag = fs.String("config", "", "")
	for _, n := range leaves {
		if n.flag == "config" || n.flag == "help" || n.flag == "h" {
			return fmt.Errorf("config: field %s: flag name --%s is reserved", n.path, n.flag)
		}
		fs.Var(&flagValue{isBool: n.value.Kind() == reflect.Bool, set: func(s string) {
			assigned = append(assigned, assignment{n: n, raw: s})
		}}, n.flag, n.help)
	}
	if err := fs.Parse(o.Args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			writeUsage(usage, o, leaves)
			return ErrHelp
		}
		return fmt.Errorf("config: %w", err)
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("config: unexpected argument %q", fs.Arg(0))
	}

	var errs []error

	// File.
	path, pathSource := *configFlag, "flag --config"
	if path == "" && o.EnvPrefix != "" {
		name := o.EnvPrefix + "_CONFIG"
		path, pathSource = getenv(name), "env "+name
	}
	if path != "" {
		errs = append(errs, loadFile(root, path, pathSource)...)
	}

	// Environment.
	for _, n := range leaves {
		if n.env == "" {
			continue
		}
		if s := getenv(n.env); s != "" {
			if err := setText(n, s, "env "+n.env); err != nil {
				errs = append(errs, err)
			}
		}
	}

	// Flags.
	for _, a := range assigned {
		if err := setText(a.n, a.raw, "flag --"+a.n.flag); err != nil {
			errs = append(errs, err)
		}
	}
	if len(errs) > 0 {
		return errors.Join(errs...)
	}

	sources := make(map[string]string, len(leaves))
	for _, n := range leaves {
		sources[n.path] = n.source
	}
	return validate(root, sources)
}

// build walks the struct behind n and records its tagged fields.
func build(n *node, envPrefix string, leaves *[]*node) error {
	t := n.value.Type()
	for i := range t.NumField() {
		sf := t.Field(i)
		name, ok := sf.Tag.Lookup("cfg")
		if !ok || name == "-" || !sf.IsExported() {
			continue
		}
		if name == "" || strings.ContainsAny(name, ". =") {
			return fmt.Errorf("config: field %s.%s: invalid cfg tag %q", t.Name(), sf.Name, name)
		}
		if n.child(name) != nil {
			return fmt.Errorf("config: field %s.%s: duplicate cfg tag %q", t.Name(), sf.Name, name)
		}
		c := &node{
			name:  name,
			path:  joinPath(n.path, name),
			help:  sf.Tag.Get("help"),
			value: n.value.Field(i),
		}
		n.children = append(n.children, c)
		if sf.Type.Kind() == reflect.Struct {
			if err := build(c, envPrefix, leaves); err != nil {
				return err
			}
			continue
		}
		if typeName(sf.Type) == "" {
			return fmt.Errorf("config: field %s (%s): unsupported type %s", c.path, sf.Name, sf.Type)
		}
		c.leaf = true
		c.flag = strings.ReplaceAll(c.path, "_", "-")
		if envPrefix != "" {
			c.env = envPrefix + "_" + strings.ToUpper(strings.ReplaceAll(c.path, ".", "_"))
		}
		c.def = formatValue(c.value)
		c.source = "default"
		*leaves = append(*leaves, c)
	}
	return nil
}

func joinPath(parent, name string) string {
	if parent == "" {
		return name
	}
	return parent + "." + name
}

var durationType = reflect.TypeFor[time.Duration]()

// typeName names a supported leaf type for the usage text; "" means the type
// is not supported.
func typeName(t reflect.Type) string {
	if t == durationType {
		return "duration"
	}
	switch t.Kind() {
	case reflect.String:
		return "string"
	case reflect.Bool:
		return "bool"
	case reflect.Int, reflect.Int64:
		return "int"
	case reflect.Uint64:
		return "uint"
	case reflect.Float64:
		return "float"
	case reflect.Slice:
		if t.Elem().Kind() == reflect.String {
			return "list"
		}
	}
	return ""
}

func formatValue(v reflect.Value) string {
	if v.Type() == durationType {
		return time.Duration(v.Int()).String()
	}
	switch v.Kind() {
	case reflect.String:
		return v.String()
	case reflect.Bool:
		return strconv.FormatBool(v.Bool())
	case reflect.Int, reflect.Int64:
		return strconv.FormatInt(v.Int(), 10)
	case reflect.Uint64:
		return strconv.FormatUint(v.Uint(), 10)
	case reflect.Float64:
		return strconv.FormatFloat(v.Float(), 'g', -1, 64)
	case reflect.Slice:
		parts := make([]string, v.Len())
		for i := range parts {
			parts[i] = v.Index(i).String()
		}
		return strings.Join(parts, ",")
	}
	return ""
}

// setText parses s into leaf n, recording source on success.
func setText(n *node, s, source string) error {
	v := n.value
	fail := func(format string, args ...any) error {
		return &FieldError{Field: n.path, Source: source, Msg: fmt.Sprintf(format, args...)}
	}
	switch {
	case v.Type() == durationType:
		d, err := time.ParseDuration(s)
		if err != nil {
			return fail("invalid duration %q (want e.g. 500ms, 30s, 1h30m)", s)
		}
		v.SetInt(int64(d))
	case v.Kind() == reflect.String:
		v.SetString(s)
	case v.Kind() == reflect.Bool:
		b, err := strconv.ParseBool(s)
		if err != nil {
			return fail("invalid boolean %q (want true or false)", s)
		}
		v.SetBool(b)
	case v.Kind() == reflect.Int || v.Kind() == reflect.Int64:
		i, err := strconv.ParseInt(s, 10, v.Type().Bits())
		if err != nil {
			return fail("invalid integer %q%s", s, rangeHint(err))
		}
		v.SetInt(i)
	case v.Kind() == reflect.Uint64:
		u, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			return fail("invalid unsigned integer %q%s", s, rangeHint(err))
		}
		v.SetUint(u)
	case v.Kind() == reflect.Float64:
		f, err := strconv.ParseFloat(s, 64)
		if err != nil {
			return fail("invalid number %q%s", s, rangeHint(err))
		}
		v.SetFloat(f)
	case v.Kind() == reflect.Slice:
		setList(v, splitList(s))
	default:
		return fail("unsupported type %s", v.Type())
	}
	n.source = source
	return nil
}

func rangeHint(err error) string {
	if errors.Is(err, strconv.ErrRange) {
		return ": out of range"
	}
	return ""
}

// splitList splits a comma-separated list, trimming spaces and dropping
// empty items so that "a, b," is [a b].
func splitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

func setList(v reflect.Value, items []string) {
	s := reflect.MakeSlice(v.Type(), len(items), len(items))
	for i, it := range items {
		s.Index(i).SetString(it)
	}
	v.Set(s)
}

// flagValue records raw flag text; parsing happens after the file and the
// environment so that precedence holds and errors carry the flag's name.
type flagValue struct {
	isBool bool
	set    func(string)
}

func (f *flagValue) String() string   { return "" }
func (f *flagValue) IsBoolFlag() bool { return f.isBool }
func (f *flagValue) Set(s string) error {
	f.set(s)
	return nil
}

// loadFile applies the YAML file at path. pathSource says where the path came
// from, for errors about the file as a whole.
func loadFile(root *node, path, pathSource string) []error {
	data, err := os.ReadFile(path)
	if err != nil {
		return []error{&FieldError{Field: "config", Source: pathSource, Msg: fmt.Sprintf("read config file: %v", err)}}
	}
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return []error{&FieldError{Field: "config", Source: pathSource, Msg: fmt.Sprintf("parse %s: %v", path, err)}}
	}
	if doc.Kind == 0 || len(doc.Content) == 0 {
		return nil // empty file
	}
	top := deref(doc.Content[0])
	if top.Kind == yaml.ScalarNode && top.Tag == "!!null" {
		return nil
	}
	if top.Kind != yaml.MappingNode {
		return []error{&FieldError{Field: "config", Source: fmt.Sprintf("file %s:%d", path, top.Line), Msg: "top level must be a mapping"}}
	}
	var errs []error
	decodeMapping(root, top, path, &errs)
	return errs
}

func deref(n *yaml.Node) *yaml.Node {
	for n.Kind == yaml.AliasNode && n.Alias != nil {
		n = n.Alias
	}
	return n
}

func decodeMapping(parent *node, m *yaml.Node, file string, errs *[]error) {
	seen := make(map[string]int)
	for i := 0; i+1 < len(m.Content); i += 2 {
		k, v := m.Content[i], deref(m.Content[i+1])
		at := func(n *yaml.Node) string { return fmt.Sprintf("file %s:%d", file, n.Line) }
		field := joinPath(parent.path, k.Value)
		if k.Kind != yaml.ScalarNode {
			*errs = append(*errs, &FieldError{Field: joinPath(parent.path, "?"), Source: at(k), Msg: "keys must be scalars"})
			continue
		}
		if first, dup := seen[k.Value]; dup {
			*errs = append(*errs, &FieldError{Field: field, Source: at(k), Msg: fmt.Sprintf("duplicate key (first at line %d)", first)})
			continue
		}
		seen[k.Value] = k.Line
		c := parent.child(k.Value)
		if c == nil {
			msg := "unknown key"
			if alt := strings.ReplaceAll(k.Value, "-", "_"); alt != k.Value && parent.child(alt) != nil {
				msg += fmt.Sprintf(" (did you mean %s?)", alt)
			}
			*errs = append(*errs, &FieldError{Field: field, Source: at(k), Msg: msg})
			continue
		}
		if v.Kind == yaml.ScalarNode && v.Tag == "!!null" {
			continue // "key:" with no value leaves the default
		}
		switch {
		case !c.leaf:
			if v.Kind != yaml.MappingNode {
				*errs = append(*errs, &FieldError{Field: field, Source: at(v), Msg: "want a mapping"})
				continue
			}
			decodeMapping(c, v, file, errs)
		case v.Kind == yaml.ScalarNode:
			if err := setText(c, v.Value, at(v)); err != nil {
				*errs = append(*errs, err)
			}
		case v.Kind == yaml.SequenceNode && c.value.Kind() == reflect.Slice:
			items := make([]string, 0, len(v.Content))
			ok := true
			for _, it := range v.Content {
				it = deref(it)
				if it.Kind != yaml.ScalarNode {
					*errs = append(*errs, &FieldError{Field: field, Source: at(it), Msg: "list items must be scalars"})
					ok = false
					break
				}
				items = append(items, it.Value)
			}
			if ok {
				setList(c.value, items)
				c.source = at(v)
			}
		default:
			*errs = append(*errs, &FieldError{Field: field, Source: at(v), Msg: fmt.Sprintf("want a single %s value", typeName(c.value.Type()))})
		}
	}
}

// validate calls Validate on every struct node, children before parents.
func validate(n *node, sources map[string]string) error {
	var errs []error
	for _, c := range n.children {
		if !c.leaf {
			if err := validate(c, sources); err != nil {
				errs = append(errs, err)
			}
		}
	}
	if v, ok := n.value.Addr().Interface().(validator); ok {
		if err := v.Validate(); err != nil {
			errs = append(errs, annotate(err, n.path, sources))
		}
	}
	return errors.Join(errs...)
}

// annotate copies the FieldErrors in err (directly or inside errors.Join),
// prefixing Field with prefix and filling an empty Source from sources.
// Other errors pass through unchanged.
func annotate(err error, prefix string, sources map[string]string) error {
	switch x := err.(type) {
	case *FieldError:
		c := *x
		if prefix != "" && c.Field != "" {
			c.Field = prefix + "." + c.Field
		}
		if c.Source == "" {
			c.Source = sources[c.Field]
		}
		return &c
	case interface{ Unwrap() []error }:
		children := x.Unwrap()
		msgs := make([]string, len(children))
		for i, c := range children {
			msgs[i] = c.Error()
		}
		if err.Error() != strings.Join(msgs, "\n") {
			return err // not an errors.Join; keep the caller's wording
		}
		out := make([]error, len(children))
		for i, c := range children {
			out[i] = annotate(c, prefix, sources)
		}
		return errors.Join(out...)
	}
	return err
}

func writeUsage(w io.Writer, o Options, leaves []*node) {
	var b strings.Builder
	if o.Name != "" {
		fmt.Fprintf(&b, "Usage: %s [flags]\n\n", o.Name)
	} else {
		b.WriteString("Usage: [flags]\n\n")
	}
	b.WriteString("Flags (precedence: default < config file < environment < flag):\n")
	entry := func(flagName, typ, help string, notes []string) {
		fmt.Fprintf(&b, "  --%s", flagName)
		if typ != "" {
			fmt.Fprintf(&b, " %s", typ)
		}
		b.WriteString("\n      ")
		if help == "" {
			help = "(no description)"
		}
		b.WriteString(help)
		if len(notes) > 0 {
			fmt.Fprintf(&b, " (%s)", strings.Join(notes, ", "))
		}
		b.WriteString("\n")
	}
	var configNotes []string
	if o.EnvPrefix != "" {
		configNotes = append(configNotes, "env "+o.EnvPrefix+"_CONFIG")
	}
	entry("config", "path", "YAML config file", configNotes)
	for _, n := range leaves {
		var notes []string
		if n.env != "" {
			notes = append(notes, "env "+n.env)
		}
		if n.def != "" && !n.value.IsZero() {
			notes = append(notes, fmt.Sprintf("default %q", n.def))
		}
		typ := typeName(n.value.Type())
		if typ == "bool" {
			typ = ""
		}
		entry(n.flag, typ, n.help, notes)
	}
	b.WriteString("  -h, --help\n      show this help\n")
	_, _ = io.WriteString(w, b.String())
}
