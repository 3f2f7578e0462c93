package procstack

import (
	"fmt"
	"reflect"
	"time"

	"gopkg.in/yaml.v3"

	auditserver "github.com/credmatrix/credmatrix/services/audit/server"
	brokerserver "github.com/credmatrix/credmatrix/services/broker/server"
	keyguardserver "github.com/credmatrix/credmatrix/services/keyguard/server"
)

// defaultsOf returns the default configuration of a service.
func defaultsOf(name string) any {
	switch name {
	case "audit":
		return auditserver.DefaultConfig()
	case "broker":
		return brokerserver.DefaultConfig()
	case "keyguard":
		return keyguardserver.DefaultConfig()
	}
	panic("procstack: unknown service " + name)
}

// MarshalConfig writes cfg, a service configuration struct (fields tagged
// `cfg:"name"`, as platform/config loads them), as the YAML file the
// service's --config flag reads. Only the fields that differ from
// defaults (the same type, the service's DefaultConfig) are written, so the
// file says what the stack changes, and a binary built from an older tree
// still loads it as long as it knows those keys.
func MarshalConfig(cfg, defaults any) ([]byte, error) {
	v, d := reflect.ValueOf(cfg), reflect.ValueOf(defaults)
	if v.Kind() != reflect.Struct || v.Type() != d.Type() {
		return nil, fmt.Errorf("procstack: MarshalConfig wants two structs of one type, got %T and %T", cfg, defaults)
	}
	m, err := diff(v, d)
	if err != nil {
		return nil, err
	}
	return yaml.Marshal(m)
}

var durationType = reflect.TypeFor[time.Duration]()

// diff returns the tagged fields of v that differ from d, nested structs
// as nested maps.
func diff(v, d reflect.Value) (map[string]any, error) {
	out := map[string]any{}
	t := v.Type()
	for i := range t.NumField() {
		sf := t.Field(i)
		name, ok := sf.Tag.Lookup("cfg")
		if !ok || name == "-" || !sf.IsExported() {
			continue
		}
		fv, fd := v.Field(i), d.Field(i)
		if sf.Type.Kind() == reflect.Struct {
			sub, err := diff(fv, fd)
			if err != nil {
				return nil, err
			}
			if len(sub) > 0 {
				out[name] = sub
			}
			continue
		}
		if reflect.DeepEqual(fv.Interface(), fd.Interface()) {
			continue
		}
		switch {
		case sf.Type == durationType:
			out[name] = time.Duration(fv.Int()).String()
		case sf.Type.Kind() == reflect.Slice && sf.Type.Elem().Kind() == reflect.String:
			items := make([]string, fv.Len())
			for j := range items {
				items[j] = fv.Index(j).String()
			}
			out[name] = items
		case sf.Type.Kind() == reflect.String, sf.Type.Kind() == reflect.Bool,
			sf.Type.Kind() == reflect.Int, sf.Type.Kind() == reflect.Int64,
			sf.Type.Kind() == reflect.Uint64, sf.Type.Kind() == reflect.Float64:
			out[name] = fv.Interface()
		default:
			return nil, fmt.Errorf("procstack: field %s: unsupported type %s", name, sf.Type)
		}
	}
	return out, nil
}
