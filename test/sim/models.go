package sim

import "fmt"

// Models returns the scheduler and core constructors by name: "real" (the
// real scheduler and download core) or "double" (the simulator's stand-ins).
func Models(name string) (NewSchedulerFunc, NewCoreFunc, error) {
	switch name {
	case "double":
		return NewDoubleScheduler, NewDoubleCore, nil
	case "real":
		return newRealScheduler, newRealCore, nil
	case "real-scheduler":
		return newRealScheduler, NewDoubleCore, nil
	case "real-core":
		return NewDoubleScheduler, newRealCore, nil
	}
	return nil, nil, fmt.Errorf("unknown models %q (want real, double, real-scheduler or real-core)", name)
}
