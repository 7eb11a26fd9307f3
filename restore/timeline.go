package restore

// Timeline is the typed record of one restore: every stage with its switch
// and completion, every arrival and every step, in the order the engine saw
// them. It is an Observer, and the engine keeps one for every restore.
type Timeline struct {
	Stages   []StageSpan
	Arrivals []ArrivalEvent
	Steps    []StepEvent
}

// StageSpan is one stage from its switch until its last arrival (Done 0
// when it never completed).
type StageSpan struct {
	Stage        Stage
	Participants int
	Switched     uint64
	Done         uint64
}

// Stage returns the span of stage s, or nil.
func (t *Timeline) Stage(s Stage) *StageSpan {
	for i := range t.Stages {
		if t.Stages[i].Stage == s {
			return &t.Stages[i]
		}
	}
	return nil
}

func (t *Timeline) StageSwitched(e StageEvent) {
	t.Stages = append(t.Stages, StageSpan{Stage: e.Stage, Participants: e.Participants, Switched: e.At})
}

func (t *Timeline) TaskArrived(e ArrivalEvent) {
	t.Arrivals = append(t.Arrivals, e)
	if s := t.Stage(e.Stage); s != nil && e.At > s.Done {
		s.Done = e.At
	}
}

func (t *Timeline) StepDone(e StepEvent) { t.Steps = append(t.Steps, e) }

// observers fans events out to several observers.
type observers []Observer

func (o observers) StageSwitched(e StageEvent) {
	for _, x := range o {
		x.StageSwitched(e)
	}
}

func (o observers) TaskArrived(e ArrivalEvent) {
	for _, x := range o {
		x.TaskArrived(e)
	}
}

func (o observers) StepDone(e StepEvent) {
	for _, x := range o {
		x.StepDone(e)
	}
}
