package oidc

// RefreshAfter exposes KeyLifetime.refreshAfter to the tests.
var RefreshAfter = KeyLifetime.refreshAfter
