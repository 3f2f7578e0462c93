// Package grantcodec is the stored form of a keyguard grant, shared by the
// state stores so that a grant reads back the same from each: JSON with
// operations by name and times at full precision.
package grantcodec

import (
	"encoding/json"
	"fmt"
	"time"

	"github.com/credmatrix/credmatrix/services/keyguard"
)

type grantJSON struct {
	ID              string            `json:"id"`
	Principal       string            `json:"principal"`
	DataClass       string            `json:"data_class"`
	Operations      []string          `json:"operations"`
	Regions         []string          `json:"regions"`
	RequiredContext map[string]string `json:"required_context,omitempty"`
	ExpireTime      time.Time         `json:"expire_time"`
	CreateTime      time.Time         `json:"create_time"`
	CreatedBy       string            `json:"created_by"`
}

// Encode returns the stored form of g.
func Encode(g keyguard.Grant) ([]byte, error) {
	j := grantJSON{ID: g.ID, Principal: g.Principal, DataClass: g.DataClass, Regions: g.Regions,
		RequiredContext: g.RequiredContext, ExpireTime: g.ExpireTime, CreateTime: g.CreateTime, CreatedBy: g.CreatedBy}
	for _, op := range g.Operations {
		j.Operations = append(j.Operations, op.String())
	}
	b, err := json.Marshal(j)
	if err != nil {
		return nil, fmt.Errorf("encode grant %s: %w", g.ID, err)
	}
	return b, nil
}

// Decode reads a grant's stored form; an unknown operation is an error (a
// grant is never widened or narrowed silently).
func Decode(body []byte) (keyguard.Grant, error) {
	var j grantJSON
	if err := json.Unmarshal(body, &j); err != nil {
		return keyguard.Grant{}, fmt.Errorf("decode grant: %w", err)
	}
	g := keyguard.Grant{ID: j.ID, Principal: j.Principal, DataClass: j.DataClass, Regions: j.Regions,
		RequiredContext: j.RequiredContext, ExpireTime: j.ExpireTime, CreateTime: j.CreateTime, CreatedBy: j.CreatedBy}
	for _, name := range j.Operations {
		op, ok := keyguard.ParseOperation(name)
		if !ok {
			return keyguard.Grant{}, fmt.Errorf("decode grant %s: unknown operation %q", j.ID, name)
		}
		g.Operations = append(g.Operations, op)
	}
	return g, nil
}
