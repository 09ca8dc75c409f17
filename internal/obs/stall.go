package obs

import (
	"io"
	"net/http"
	"time"
)

// stallChunk is the most written under one write deadline: a response must
// move at least stallChunk bytes per WriteStallTimeout to live on.
const stallChunk = 256 << 10

// StallGuard wraps h so that every response write runs under a connection
// write deadline of now+stall, renewed before each chunk of at most
// stallChunk bytes. A reader that stops reading is cut after stall; a slow
// one that keeps reading is not, however long the response. A fixed
// http.Server.WriteTimeout would instead cut every long download. stall ≤ 0
// returns h unchanged. Sendfile survives: ReadFrom passes *os.File sources
// through in chunks.
func StallGuard(h http.Handler, stall time.Duration) http.Handler {
	if stall <= 0 {
		return h
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		sw := &stallWriter{ResponseWriter: w, rc: http.NewResponseController(w), stall: stall}
		// Also bounds the final flush after the handler returns.
		sw.extend()
		h.ServeHTTP(sw, r)
	})
}

type stallWriter struct {
	http.ResponseWriter
	rc    *http.ResponseController
	stall time.Duration
}

func (w *stallWriter) extend() { _ = w.rc.SetWriteDeadline(time.Now().Add(w.stall)) }

// Unwrap lets http.ResponseController reach Flush, Hijack and deadlines.
func (w *stallWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// Flush keeps the wrapped writer's Flusher visible to type assertions.
func (w *stallWriter) Flush() {
	w.extend()
	_ = w.rc.Flush()
}

func (w *stallWriter) Write(p []byte) (int, error) {
	n := 0
	for len(p) > 0 {
		c := p[:min(len(p), stallChunk)]
		w.extend()
		k, err := w.ResponseWriter.Write(c)
		n += k
		if err != nil {
			return n, err
		}
		p = p[k:]
	}
	return n, nil
}

// ReadFrom copies src in chunks under renewed deadlines through the wrapped
// writer's ReadFrom (sendfile for files, also behind an io.LimitedReader).
func (w *stallWriter) ReadFrom(src io.Reader) (int64, error) {
	rf, ok := w.ResponseWriter.(io.ReaderFrom)
	if !ok {
		return io.Copy(writerOnly{w}, src)
	}
	inner, limit := src, int64(-1)
	lr, isLimited := src.(*io.LimitedReader)
	if isLimited {
		inner, limit = lr.R, lr.N
	}
	var total int64
	for {
		n := int64(stallChunk)
		if limit >= 0 {
			n = min(n, limit-total)
			if n <= 0 {
				return total, nil
			}
		}
		w.extend()
		k, err := rf.ReadFrom(&io.LimitedReader{R: inner, N: n})
		total += k
		if isLimited {
			lr.N -= k
		}
		if err != nil || k < n {
			return total, err
		}
	}
}

// writerOnly hides ReadFrom so io.Copy does not recurse.
type writerOnly struct{ io.Writer }
