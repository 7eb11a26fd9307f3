package trace

import (
	"go.opentelemetry.io/otel/attribute"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
)

// Attribute keys. The OpenTelemetry semantic conventions name the process
// and thread ones; crest.* are crest's own.
const (
	keyPID       = semconv.ProcessPIDKey       // pid in the engine's namespace
	keyParentPID = semconv.ProcessParentPIDKey // parent's pid in the engine's namespace
	keyVPID      = semconv.ProcessVpidKey      // pid inside the task's pid namespace: the image's
	keyCommand   = semconv.ProcessCommandKey
	keyThreadID  = semconv.ThreadIDKey
	keyErrorType = semconv.ErrorTypeKey

	keyOp           = attribute.Key("crest.op")
	keyImagesDir    = attribute.Key("crest.images_dir")
	keyTasks        = attribute.Key("crest.tasks")
	keyThreads      = attribute.Key("crest.threads")
	keyPages        = attribute.Key("crest.pages")
	keyBytes        = attribute.Key("crest.bytes")
	keyVerified     = attribute.Key("crest.verification.checked")
	keyVerdict      = attribute.Key("crest.verification.verdict")
	keyVerdictText  = attribute.Key("crest.verification.detail")
	keyClockUncert  = attribute.Key("crest.clock.uncertainty_ns")
	keyStage        = attribute.Key("crest.stage")
	keyStageNumber  = attribute.Key("crest.stage.number")
	keyParticipants = attribute.Key("crest.stage.participants")
	keyArrivals     = attribute.Key("crest.stage.arrivals")
	keyImagePID     = attribute.Key("crest.image_pid")
	keyImagePPID    = attribute.Key("crest.image_ppid")
	keyImageTID     = attribute.Key("crest.image_tid")
	keyPGID         = attribute.Key("crest.pgid")
	keySID          = attribute.Key("crest.sid")
	keyArrived      = attribute.Key("crest.arrived")
	keyStep         = attribute.Key("crest.step")
	keyErrno        = attribute.Key("crest.errno")
	keyClamped      = attribute.Key("crest.clamped")
	keyKernel       = attribute.Key("crest.kernel.event")
	keyHostTID      = attribute.Key("crest.host_tid")
	keyPhase        = attribute.Key("crest.phase")
	keyEngine       = attribute.Key("crest.engine") // a kernel event of the engine, not of a task
	keyMeasured     = attribute.Key("crest.stages.measured_ns")
)

// Keys a user may filter on; exported so tests and tools need not repeat
// the strings.
const (
	AttrStage   = keyStage
	AttrStep    = keyStep
	AttrOp      = keyOp
	AttrVerdict = keyVerdict
	// AttrMeasured, on the root, is the stages' duration as the engine
	// measured it: from the first stage switch to the last arrival at a
	// barrier (a dump, which has no barrier: to its last step's end).
	AttrMeasured = keyMeasured
)
