package sim

import "errors"

// The real scheduler and download core are wired in here once their
// transport-free APIs exist.
var errNoReal = errors.New("the real scheduler/core adapters are not built yet")

func newRealScheduler(SchedulerEnv) (Scheduler, error) { return nil, errNoReal }
func newRealCore(CoreParams) (Core, error)             { return nil, errNoReal }
