package store

import (
	"context"
	"testing"
	"time"
)

// Source progress keeps the largest count, from this daemon's own origin
// bytes or its parents' news; it wakes followers when it grows (at most
// every sourceNotify), and not on news it already had.
func TestSourceBytes(t *testing.T) {
	s, err := Open(context.Background(), t.TempDir(), testLog())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	task := fill(t, s, "src", content(4*1024), 1024, nil)
	closed := func(ch <-chan struct{}) bool {
		select {
		case <-ch:
			return true
		default:
			return false
		}
	}
	ch := task.SourceChanged()
	task.NoteSourceBytes(5000)
	if got := task.SourceBytes(); got != 5000 {
		t.Fatalf("source bytes %d after news of 5000", got)
	}
	if !closed(ch) {
		t.Fatal("news of the source did not wake the task's followers")
	}
	ch = task.SourceChanged()
	task.NoteSourceBytes(4000) // another parent, behind: no news
	task.AddOriginBytes(3000)  // own origin bytes, fewer than the news
	if got := task.SourceBytes(); got != 5000 {
		t.Fatalf("source bytes %d, want the largest (5000)", got)
	}
	time.Sleep(sourceNotify)
	task.NoteSourceBytes(5000)
	if closed(ch) {
		t.Fatal("news of no growth woke the task's followers")
	}
	task.AddOriginBytes(2500) // own bytes now 5500
	if got := task.SourceBytes(); got != 5500 {
		t.Fatalf("source bytes %d, want this daemon's own 5500", got)
	}
	if !closed(ch) {
		t.Fatal("own origin bytes did not wake the task's followers")
	}
	ch = task.SourceChanged()
	task.AddOriginBytes(100) // within sourceNotify of the last wake
	if got := task.SourceBytes(); got != 5600 {
		t.Fatalf("source bytes %d, want 5600", got)
	}
	if closed(ch) {
		t.Fatal("followers woken twice within sourceNotify")
	}
}
