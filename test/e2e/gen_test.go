package e2e

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"io"
	"math/rand/v2"
)

// genContent is large deterministic content generated on the fly, so a
// benchmark can serve gigabytes without holding them: block i is a fixed
// random block with i mixed into every word.
type genContent struct {
	size  int64
	block []byte
}

const genBlock = 1 << 20

func newGen(size int64, seed uint64) *genContent {
	b := make([]byte, genBlock)
	r := rand.New(rand.NewPCG(seed, 7))
	for i := 0; i < len(b); i += 8 {
		binary.LittleEndian.PutUint64(b[i:], r.Uint64())
	}
	return &genContent{size: size, block: b}
}

// ReadAt fills p with the content at off.
func (g *genContent) ReadAt(p []byte, off int64) (int, error) {
	if off >= g.size {
		return 0, io.EOF
	}
	n := 0
	for n < len(p) && off < g.size {
		bi, bo := off/genBlock, off%genBlock
		k := min(int64(len(p)-n), genBlock-bo, g.size-off)
		copy(p[n:], g.block[bo:bo+k])
		mix := uint64(bi)*0x9e3779b97f4a7c15 + 1
		for j := int64(0); j < k; j++ {
			p[n+int(j)] ^= byte(mix >> (8 * ((bo + j) & 7)))
		}
		n += int(k)
		off += k
	}
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

func (g *genContent) sha256() string {
	h := sha256.New()
	_, _ = io.Copy(h, io.NewSectionReader(g, 0, g.size))
	return hex.EncodeToString(h.Sum(nil))
}

// readSeeker adapts genContent for http.ServeContent.
type readSeeker struct {
	g   *genContent
	off int64
}

func (r *readSeeker) Read(p []byte) (int, error) {
	n, err := r.g.ReadAt(p, r.off)
	r.off += int64(n)
	return n, err
}

func (r *readSeeker) Seek(off int64, whence int) (int64, error) {
	switch whence {
	case io.SeekStart:
	case io.SeekCurrent:
		off += r.off
	case io.SeekEnd:
		off += r.g.size
	}
	if off < 0 {
		return 0, errors.New("negative seek")
	}
	r.off = off
	return off, nil
}
