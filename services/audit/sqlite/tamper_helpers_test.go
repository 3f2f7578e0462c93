package sqlite_test

import (
	tlog "github.com/transparency-dev/formats/log"
	"golang.org/x/mod/sumdb/note"

	auditv1 "github.com/credmatrix/credmatrix/proto/credmatrix/audit/v1"
)

type auditv1Event = auditv1.Event

// checkpointBody reads a note's checkpoint body without verifying it.
type checkpointBody struct{ root []byte }

func (c *checkpointBody) parse(signed []byte) error {
	n, err := note.Open(signed, note.VerifierList())
	var un *note.UnverifiedNoteError
	if err != nil && !asUnverified(err, &un) {
		return err
	}
	if n == nil && un != nil {
		n = un.Note
	}
	var cp tlog.Checkpoint
	if _, err := cp.Unmarshal([]byte(n.Text)); err != nil {
		return err
	}
	c.root = cp.Hash
	return nil
}

func asUnverified(err error, target **note.UnverifiedNoteError) bool {
	u, ok := err.(*note.UnverifiedNoteError)
	if ok {
		*target = u
	}
	return ok
}
