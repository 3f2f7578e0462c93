package auditevent

// ValidZone reports whether z can name a residency zone: 1 to 32 bytes of
// lowercase letters, digits and '-', starting with a letter (as the
// broker's trust policy names zones).
func ValidZone(z string) bool {
	if len(z) == 0 || len(z) > 32 || z[0] < 'a' || z[0] > 'z' {
		return false
	}
	for i := 0; i < len(z); i++ {
		c := z[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
			return false
		}
	}
	return true
}
