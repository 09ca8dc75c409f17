package core

import (
	"net"
	"strconv"
	"strings"
)

// ValidHostPort reports whether s is a plain host[:port] naming a server: a
// DNS name or IPv4 address, or a bracketed IPv6 address, with an optional
// port 1-65535. It rejects what would turn into another host, a path or a
// userinfo once put in a URL ("a@b", "a/b", "a#b", "a%2f"), which registry
// names from requests (?ns=) and image references must not carry.
func ValidHostPort(s string) bool {
	if s == "" || len(s) > 261 {
		return false
	}
	host := s
	if h, port, err := net.SplitHostPort(s); err == nil {
		n, err := strconv.Atoi(port)
		if err != nil || n < 1 || n > 65535 || port[0] == '0' || strings.Trim(port, "0123456789") != "" {
			return false
		}
		host = h
		if strings.HasPrefix(s, "[") || strings.Contains(host, ":") {
			return strings.HasPrefix(s, "[") && strings.Contains(host, ":") && net.ParseIP(host) != nil
		}
	} else if strings.HasPrefix(s, "[") && strings.HasSuffix(s, "]") {
		return strings.Contains(s, ":") && net.ParseIP(s[1:len(s)-1]) != nil
	}
	if host == "" || len(host) > 253 || host[0] == '.' || host[0] == '-' {
		return false
	}
	for _, c := range []byte(host) {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '-' || c == '_') {
			return false
		}
	}
	return true
}

// LoopbackHost reports whether s, a host or host:port, names this host's
// loopback: "localhost" or a loopback IP address.
func LoopbackHost(s string) bool {
	if h, _, err := net.SplitHostPort(s); err == nil {
		s = h
	}
	ip := net.ParseIP(s)
	return s == "localhost" || ip != nil && ip.IsLoopback()
}
