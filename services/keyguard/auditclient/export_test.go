package auditclient

// Queued reports how many events wait for an Append RPC, for tests.
func (c *Client) Queued() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.queued
}
