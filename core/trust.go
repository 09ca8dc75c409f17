package core

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// SwarmScheme reports whether a task whose URL has this scheme may enter the
// swarm: be announced to a scheduler, be pushed to a seed peer, be fetched by
// a back-to-source peer on the scheduler's word or preheated. This is the one
// allow-list; object-storage schemes join it here. file:// is never on it: a
// daemon reads a file only for its own local caller, and never lets another
// host make it read one.
func SwarmScheme(scheme string) bool {
	switch strings.ToLower(scheme) {
	case "http", "https", "s3":
		return true
	}
	return false
}

// SpecVersion is the object version a task spec names: for an s3:// URL its
// If-Match header (the object's ETag, part of the task ID through
// TaskOptions.Version), for any other URL none.
func SpecVersion(rawURL string, headers map[string]string) string {
	u, err := url.Parse(rawURL)
	if err != nil || !strings.EqualFold(u.Scheme, "s3") {
		return ""
	}
	for k, v := range headers {
		if strings.EqualFold(k, "If-Match") {
			return v
		}
	}
	return ""
}

// CheckSwarmURL checks that rawURL is an absolute URL of a swarm scheme (or
// a dfcache entry's URL).
func CheckSwarmURL(rawURL string) error {
	if _, ok := ParseCacheURL(rawURL); ok {
		return nil
	}
	u, err := url.Parse(rawURL)
	if err != nil {
		return fmt.Errorf("task url: %w: %w", err, ErrInvalid)
	}
	if !SwarmScheme(u.Scheme) || u.Host == "" {
		return fmt.Errorf("task url scheme %q is not one the swarm fetches (http, https, s3): %w", u.Scheme, ErrInvalid)
	}
	return nil
}

// CheckTaskID checks that id follows from a task's spec: a dfcache entry's
// ID from its cache ID and tag (CacheTaskID), a content task's from its
// digest (ContentTaskID), any other from the URL, the filtered query, the
// tag and the application (TaskID). A claim under any other ID could make a
// peer fetch one thing and file it as another.
func CheckTaskID(id, rawURL, digest string, o TaskOptions) error {
	if cid, ok := ParseCacheURL(rawURL); ok {
		if id == CacheTaskID(cid, o.Tag) {
			return nil
		}
		return fmt.Errorf("task id %q does not follow from dfcache entry %q: %w", id, cid, ErrInvalid)
	}
	if digest != "" {
		if cid, err := ContentTaskID(digest); err == nil && cid == id {
			return nil
		}
	}
	if id == TaskID(rawURL, o) {
		return nil
	}
	return fmt.Errorf("task id %q does not follow from its url, options or digest: %w", id, ErrInvalid)
}

// TokenHeader carries a piece token on a piece request (see PieceToken).
const TokenHeader = "X-Damselfly-Token"

// PieceToken returns the token that lets peer peerID fetch pieces of the
// private task taskID until exp: the expiry in Unix milliseconds and an
// HMAC-SHA256 with the task's key over the task ID, the peer ID and the
// expiry. The scheduler issues it; a parent checks it with CheckPieceToken
// and the key it got for the task, without a round trip.
func PieceToken(key []byte, taskID, peerID string, exp time.Time) string {
	ms := strconv.FormatInt(exp.UnixMilli(), 10)
	return ms + "." + hex.EncodeToString(tokenMAC(key, taskID, peerID, ms))
}

func tokenMAC(key []byte, taskID, peerID, ms string) []byte {
	m := hmac.New(sha256.New, key)
	m.Write([]byte("damselfly piece token\x00"))
	m.Write([]byte(taskID))
	m.Write([]byte{0})
	m.Write([]byte(peerID))
	m.Write([]byte{0})
	m.Write([]byte(ms))
	return m.Sum(nil)
}

// CheckPieceToken checks a token for (taskID, peerID) at now.
func CheckPieceToken(key []byte, token, taskID, peerID string, now time.Time) error {
	if len(key) == 0 {
		return fmt.Errorf("piece token: no key for task %s: %w", taskID, ErrUnavailable)
	}
	ms, mac, ok := strings.Cut(token, ".")
	if !ok {
		return fmt.Errorf("piece token: malformed: %w", ErrInvalid)
	}
	exp, err := strconv.ParseInt(ms, 10, 64)
	if err != nil || strconv.FormatInt(exp, 10) != ms {
		return fmt.Errorf("piece token: malformed expiry: %w", ErrInvalid)
	}
	// Only the canonical form (lower-case hex) is accepted.
	want := hex.EncodeToString(tokenMAC(key, taskID, peerID, ms))
	if !hmac.Equal([]byte(mac), []byte(want)) {
		return fmt.Errorf("piece token: not valid for task %s and peer %s: %w", taskID, peerID, ErrInvalid)
	}
	if now.UnixMilli() >= exp {
		return fmt.Errorf("piece token: expired: %w", ErrInvalid)
	}
	return nil
}

// TaskRefused starts the reason of the scheduler's Fail to a register whose
// task spec does not hold (CheckTaskID, CheckSwarmURL): the scheduler will
// not have the task, so announcing it again is pointless.
const TaskRefused = "task refused: "

// CheckSpec checks a task spec that may enter the swarm: a URL of a swarm
// scheme (CheckSwarmURL) and a task ID that follows from the spec's URL,
// digest, tag, application, filtered query and object version (CheckTaskID,
// SpecVersion). The scheduler checks every register with it and a daemon
// every task it is asked to fetch for others.
func CheckSpec(id, rawURL, digest, tag, application string, filtered []string, headers map[string]string) error {
	if err := CheckSwarmURL(rawURL); err != nil {
		return err
	}
	return CheckTaskID(id, rawURL, digest, TaskOptions{Tag: tag, Application: application, FilteredQuery: filtered,
		Version: SpecVersion(rawURL, headers)})
}
