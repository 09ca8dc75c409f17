package swarm

import (
	"bytes"
	"crypto/sha1"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
)

// TorrentPieceSize is the BitTorrent piece size the harness uses: 256 KiB,
// as in our earlier field measurements (docs/benchmarks.md).
const TorrentPieceSize = 256 << 10

// Torrent is a single-file .torrent written by MakeTorrent.
type Torrent struct {
	Data     []byte // the bencoded .torrent
	InfoHash [20]byte
}

// InfoHashHex is the info-hash in the lowercase hex that opentracker's
// whitelist wants.
func (t Torrent) InfoHashHex() string { return hex.EncodeToString(t.InfoHash[:]) }

// MakeTorrent hashes the file at path in pieces of pieceSize and returns a
// single-file torrent announcing to announce. Writing it ourselves avoids a
// dependency on mktorrent.
func MakeTorrent(path, announce string, pieceSize int) (Torrent, error) {
	f, err := os.Open(path)
	if err != nil {
		return Torrent{}, fmt.Errorf("make torrent: %w", err)
	}
	defer f.Close()
	var pieces []byte
	var length int64
	buf := make([]byte, pieceSize)
	for {
		n, err := io.ReadFull(f, buf)
		if n > 0 {
			sum := sha1.Sum(buf[:n])
			pieces = append(pieces, sum[:]...)
			length += int64(n)
		}
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			break
		}
		if err != nil {
			return Torrent{}, fmt.Errorf("make torrent: read %s: %w", path, err)
		}
	}
	info := map[string]any{
		"name":         filepath.Base(path),
		"length":       length,
		"piece length": int64(pieceSize),
		"pieces":       pieces,
	}
	infoEnc, err := Bencode(info)
	if err != nil {
		return Torrent{}, fmt.Errorf("make torrent: %w", err)
	}
	meta := map[string]any{
		"announce":   announce,
		"created by": "damselfly swarm harness",
		"info":       rawBencode(infoEnc),
	}
	data, err := Bencode(meta)
	if err != nil {
		return Torrent{}, fmt.Errorf("make torrent: %w", err)
	}
	return Torrent{Data: data, InfoHash: sha1.Sum(infoEnc)}, nil
}

// rawBencode is already-encoded bencode inserted verbatim.
type rawBencode []byte

// Bencode encodes strings, byte slices, integers, lists and maps with string
// keys (sorted, as the format requires).
func Bencode(v any) ([]byte, error) {
	var b bytes.Buffer
	if err := bencodeTo(&b, v); err != nil {
		return nil, err
	}
	return b.Bytes(), nil
}

func bencodeTo(b *bytes.Buffer, v any) error {
	switch x := v.(type) {
	case rawBencode:
		b.Write(x)
	case string:
		b.WriteString(strconv.Itoa(len(x)))
		b.WriteByte(':')
		b.WriteString(x)
	case []byte:
		b.WriteString(strconv.Itoa(len(x)))
		b.WriteByte(':')
		b.Write(x)
	case int:
		fmt.Fprintf(b, "i%de", x)
	case int64:
		fmt.Fprintf(b, "i%de", x)
	case []any:
		b.WriteByte('l')
		for _, e := range x {
			if err := bencodeTo(b, e); err != nil {
				return err
			}
		}
		b.WriteByte('e')
	case map[string]any:
		keys := make([]string, 0, len(x))
		for k := range x {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		b.WriteByte('d')
		for _, k := range keys {
			if err := bencodeTo(b, k); err != nil {
				return err
			}
			if err := bencodeTo(b, x[k]); err != nil {
				return fmt.Errorf("key %q: %w", k, err)
			}
		}
		b.WriteByte('e')
	default:
		return fmt.Errorf("bencode: unsupported type %T", v)
	}
	return nil
}

// Bdecode decodes one bencoded value: strings come back as string, integers
// as int64, lists as []any and dictionaries as map[string]any.
func Bdecode(data []byte) (any, error) {
	v, rest, err := bdecode(data, 0)
	if err != nil {
		return nil, err
	}
	if len(rest) != 0 {
		return nil, fmt.Errorf("bdecode: %d trailing bytes", len(rest))
	}
	return v, nil
}

const maxBencodeDepth = 64

func bdecode(d []byte, depth int) (any, []byte, error) {
	if depth > maxBencodeDepth {
		return nil, nil, errors.New("bdecode: nested too deep")
	}
	if len(d) == 0 {
		return nil, nil, errors.New("bdecode: unexpected end")
	}
	switch c := d[0]; {
	case c == 'i':
		end := bytes.IndexByte(d, 'e')
		if end < 0 {
			return nil, nil, errors.New("bdecode: unterminated integer")
		}
		n, err := strconv.ParseInt(string(d[1:end]), 10, 64)
		if err != nil {
			return nil, nil, fmt.Errorf("bdecode: integer: %w", err)
		}
		return n, d[end+1:], nil
	case c == 'l':
		var list []any
		d = d[1:]
		for len(d) > 0 && d[0] != 'e' {
			v, rest, err := bdecode(d, depth+1)
			if err != nil {
				return nil, nil, err
			}
			list = append(list, v)
			d = rest
		}
		if len(d) == 0 {
			return nil, nil, errors.New("bdecode: unterminated list")
		}
		return list, d[1:], nil
	case c == 'd':
		m := map[string]any{}
		d = d[1:]
		for len(d) > 0 && d[0] != 'e' {
			k, rest, err := bdecode(d, depth+1)
			if err != nil {
				return nil, nil, err
			}
			ks, ok := k.(string)
			if !ok {
				return nil, nil, errors.New("bdecode: dictionary key is not a string")
			}
			v, rest, err := bdecode(rest, depth+1)
			if err != nil {
				return nil, nil, err
			}
			m[ks] = v
			d = rest
		}
		if len(d) == 0 {
			return nil, nil, errors.New("bdecode: unterminated dictionary")
		}
		return m, d[1:], nil
	case c >= '0' && c <= '9':
		colon := bytes.IndexByte(d, ':')
		if colon < 0 {
			return nil, nil, errors.New("bdecode: string without length")
		}
		n, err := strconv.Atoi(string(d[:colon]))
		if err != nil || n < 0 || colon+1+n > len(d) {
			return nil, nil, errors.New("bdecode: bad string length")
		}
		return string(d[colon+1 : colon+1+n]), d[colon+1+n:], nil
	default:
		return nil, nil, fmt.Errorf("bdecode: unexpected byte %q", c)
	}
}
