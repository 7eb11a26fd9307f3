package images

import (
	"google.golang.org/protobuf/proto"

	"github.com/checkpoint-restore/go-criu/v8/crit/images/apparmor"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/autofs"
	binfmt_misc "github.com/checkpoint-restore/go-criu/v8/crit/images/binfmt-misc"
	bpfmap_data "github.com/checkpoint-restore/go-criu/v8/crit/images/bpfmap-data"
	bpfmap_file "github.com/checkpoint-restore/go-criu/v8/crit/images/bpfmap-file"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/cgroup"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/cpuinfo"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/creds"
	criu_core "github.com/checkpoint-restore/go-criu/v8/crit/images/criu-core"
	criu_sa "github.com/checkpoint-restore/go-criu/v8/crit/images/criu-sa"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/eventfd"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/eventpoll"
	ext_file "github.com/checkpoint-restore/go-criu/v8/crit/images/ext-file"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/fdinfo"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/fh"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/fifo"
	file_lock "github.com/checkpoint-restore/go-criu/v8/crit/images/file-lock"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/fs"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/fsnotify"
	ghost_file "github.com/checkpoint-restore/go-criu/v8/crit/images/ghost-file"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/inventory"
	ipc_msg "github.com/checkpoint-restore/go-criu/v8/crit/images/ipc-msg"
	ipc_sem "github.com/checkpoint-restore/go-criu/v8/crit/images/ipc-sem"
	ipc_shm "github.com/checkpoint-restore/go-criu/v8/crit/images/ipc-shm"
	ipc_var "github.com/checkpoint-restore/go-criu/v8/crit/images/ipc-var"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/memfd"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/mm"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/mnt"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/netdev"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/ns"
	packet_sock "github.com/checkpoint-restore/go-criu/v8/crit/images/packet-sock"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/pagemap"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/pidns"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/pipe"
	pipe_data "github.com/checkpoint-restore/go-criu/v8/crit/images/pipe-data"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/pstree"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/regfile"
	remap_file_path "github.com/checkpoint-restore/go-criu/v8/crit/images/remap-file-path"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/rlimit"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/seccomp"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/siginfo"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/signalfd"
	sk_inet "github.com/checkpoint-restore/go-criu/v8/crit/images/sk-inet"
	sk_netlink "github.com/checkpoint-restore/go-criu/v8/crit/images/sk-netlink"
	sk_packet "github.com/checkpoint-restore/go-criu/v8/crit/images/sk-packet"
	sk_unix "github.com/checkpoint-restore/go-criu/v8/crit/images/sk-unix"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/stats"
	tcp_stream "github.com/checkpoint-restore/go-criu/v8/crit/images/tcp-stream"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/timens"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/timer"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/timerfd"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/tty"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/tun"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/userns"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/utsns"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/vma"
)

// Payload says what raw bytes follow an entry of a kind, if any.
type Payload int

const (
	// NoPayload: entries follow each other directly.
	NoPayload Payload = iota
	// PipeDataPayload: pipe_data_entry.bytes bytes of pipe content follow
	// each entry (pipes-data.img, fifo-data.img).
	PipeDataPayload
	// SkQueuePayload: sk_packet_entry.length bytes of a queued packet
	// follow each entry (sk-queues.img).
	SkQueuePayload
	// TCPStreamPayload: inq_len bytes of the receive queue, then outq_len
	// bytes of the send queue follow the single entry (tcp-stream-N.img).
	TCPStreamPayload
	// GhostPayload: the head is a ghost_file_entry. With chunks set, it is
	// followed by ghost_chunk_entry messages, each followed by len bytes;
	// without (the older layout), the rest of the file is the content.
	GhostPayload
	// BpfmapPayload: keys_bytes then values_bytes follow each entry.
	BpfmapPayload
	// IPCShmPayload: a SysV shared memory segment's content, size bytes
	// rounded up to 4, follows an ipc_shm_entry without in_pagemaps
	// (older images; newer ones keep it in pagemap-shmem-ID.img).
	IPCShmPayload
	// IPCSemPayload: nsems u16 semaphore values, padded to 8 bytes,
	// follow each ipc_sem_entry.
	IPCSemPayload
	// IPCMsgPayload: qnum messages follow each ipc_msg_entry, each an
	// ipc_msg (framed as an entry: u32 length, then the message) and its
	// msize bytes of text padded to 8 (IPCMessages).
	IPCMsgPayload
)

// Kind describes one kind of CRIU image file: how it is named, how it starts
// and what its entries are.
type Kind struct {
	// Name is CRIU's name for the magic (as crit prints it), e.g. "CORE".
	Name string
	// File is the file name pattern, with %d for the id, e.g. "core-%d.img".
	// Kinds that several file names share (PAGEMAP) name the main one.
	File   string
	Magic  Magic
	Prefix Magic // MagicImgCommon, MagicImgService, or 0 for none (inventory)
	// Head, when not nil, makes the first entry's message; Entry makes the
	// rest (pagemap: pagemap_head then pagemap_entry).
	Head    func() proto.Message
	Entry   func() proto.Message
	Payload Payload
}

// NewMessage returns an empty message for the entry at index i.
func (k *Kind) NewMessage(i int) proto.Message {
	if i == 0 && k.Head != nil {
		return k.Head()
	}
	return k.Entry()
}

// Image kinds crest reads and writes. The variable names follow CRIU's
// CR_FD_* names where they exist.
var (
	KindInventory = &Kind{Name: "INVENTORY", File: "inventory.img", Magic: MagicInventory,
		Entry: func() proto.Message { return &inventory.InventoryEntry{} }}
	KindPstree = &Kind{Name: "PSTREE", File: "pstree.img", Magic: MagicPstree, Prefix: MagicImgCommon,
		Entry: func() proto.Message { return &pstree.PstreeEntry{} }}
	KindCore = &Kind{Name: "CORE", File: "core-%d.img", Magic: MagicCore, Prefix: MagicImgCommon,
		Entry: func() proto.Message { return &criu_core.CoreEntry{} }}
	KindIDs = &Kind{Name: "IDS", File: "ids-%d.img", Magic: MagicIDs, Prefix: MagicImgCommon,
		Entry: func() proto.Message { return &criu_core.TaskKobjIdsEntry{} }}
	KindMM = &Kind{Name: "MM", File: "mm-%d.img", Magic: MagicMM, Prefix: MagicImgCommon,
		Entry: func() proto.Message { return &mm.MmEntry{} }}
	KindCreds = &Kind{Name: "CREDS", File: "creds-%d.img", Magic: MagicCreds, Prefix: MagicImgCommon,
		Entry: func() proto.Message { return &creds.CredsEntry{} }}
	KindVMAs = &Kind{Name: "VMAS", File: "vmas-%d.img", Magic: MagicVMAs, Prefix: MagicImgCommon,
		Entry: func() proto.Message { return &vma.VmaEntry{} }}
	// KindPagemap covers pagemap-N.img and pagemap-shmem-N.img: the same
	// magic and layout.
	KindPagemap = &Kind{Name: "PAGEMAP", File: "pagemap-%d.img", Magic: MagicPagemap, Prefix: MagicImgCommon,
		Head:  func() proto.Message { return &pagemap.PagemapHead{} },
		Entry: func() proto.Message { return &pagemap.PagemapEntry{} }}
	KindFdinfo = &Kind{Name: "FDINFO", File: "fdinfo-%d.img", Magic: MagicFdinfo, Prefix: MagicImgCommon,
		Entry: func() proto.Message { return &fdinfo.FdinfoEntry{} }}
	KindFiles = &Kind{Name: "FILES", File: "files.img", Magic: MagicFiles, Prefix: MagicImgCommon,
		Entry: func() proto.Message { return &fdinfo.FileEntry{} }}
	KindFS = &Kind{Name: "FS", File: "fs-%d.img", Magic: MagicFS, Prefix: MagicImgCommon,
		Entry: func() proto.Message { return &fs.FsEntry{} }}
	KindRegFiles = &Kind{Name: "REG_FILES", File: "reg-files.img", Magic: MagicRegFiles, Prefix: MagicImgCommon,
		Entry: func() proto.Message { return &regfile.RegFileEntry{} }}
	KindExtFiles = &Kind{Name: "EXT_FILES", File: "ext-files.img", Magic: MagicExtFiles, Prefix: MagicImgCommon,
		Entry: func() proto.Message { return &ext_file.ExtFileEntry{} }}
	KindNSFiles = &Kind{Name: "NS_FILES", File: "ns-files.img", Magic: MagicNSFiles, Prefix: MagicImgCommon,
		Entry: func() proto.Message { return &ns.NsFileEntry{} }}
	KindEventfd = &Kind{Name: "EVENTFD_FILE", File: "eventfd.img", Magic: MagicEventfdFile, Prefix: MagicImgCommon,
		Entry: func() proto.Message { return &eventfd.EventfdFileEntry{} }}
	KindEventpoll = &Kind{Name: "EVENTPOLL_FILE", File: "eventpoll.img", Magic: MagicEventpollFile, Prefix: MagicImgCommon,
		Entry: func() proto.Message { return &eventpoll.EventpollFileEntry{} }}
	KindEventpollTfd = &Kind{Name: "EVENTPOLL_TFD", File: "eventpoll-tfd.img", Magic: MagicEventpollTfd, Prefix: MagicImgCommon,
		Entry: func() proto.Message { return &eventpoll.EventpollTfdEntry{} }}
	KindSignalfd = &Kind{Name: "SIGNALFD", File: "signalfd.img", Magic: MagicSignalfd, Prefix: MagicImgCommon,
		Entry: func() proto.Message { return &signalfd.SignalfdEntry{} }}
	KindInotify = &Kind{Name: "INOTIFY_FILE", File: "inotify.img", Magic: MagicInotifyFile, Prefix: MagicImgCommon,
		Entry: func() proto.Message { return &fsnotify.InotifyFileEntry{} }}
	KindInotifyWd = &Kind{Name: "INOTIFY_WD", File: "inotify-wd.img", Magic: MagicInotifyWd, Prefix: MagicImgCommon,
		Entry: func() proto.Message { return &fsnotify.InotifyWdEntry{} }}
	KindFanotify = &Kind{Name: "FANOTIFY_FILE", File: "fanotify.img", Magic: MagicFanotifyFile, Prefix: MagicImgCommon,
		Entry: func() proto.Message { return &fsnotify.FanotifyFileEntry{} }}
	KindFanotifyMark = &Kind{Name: "FANOTIFY_MARK", File: "fanotify-mark.img", Magic: MagicFanotifyMark, Prefix: MagicImgCommon,
		Entry: func() proto.Message { return &fsnotify.FanotifyMarkEntry{} }}
	KindPipes = &Kind{Name: "PIPES", File: "pipes.img", Magic: MagicPipes, Prefix: MagicImgCommon,
		Entry: func() proto.Message { return &pipe.PipeEntry{} }}
	KindPipesData = &Kind{Name: "PIPES_DATA", File: "pipes-data.img", Magic: MagicPipesData, Prefix: MagicImgCommon,
		Entry: func() proto.Message { return &pipe_data.PipeDataEntry{} }, Payload: PipeDataPayload}
	KindFifo = &Kind{Name: "FIFO", File: "fifo.img", Magic: MagicFifo, Prefix: MagicImgCommon,
		Entry: func() proto.Message { return &fifo.FifoEntry{} }}
	KindFifoData = &Kind{Name: "FIFO_DATA", File: "fifo-data.img", Magic: MagicFifoData, Prefix: MagicImgCommon,
		Entry: func() proto.Message { return &pipe_data.PipeDataEntry{} }, Payload: PipeDataPayload}
	KindSigact = &Kind{Name: "SIGACT", File: "sigacts-%d.img", Magic: MagicSigact, Prefix: MagicImgCommon,
		Entry: func() proto.Message { return &criu_sa.SaEntry{} }}
	KindUnixSk = &Kind{Name: "UNIXSK", File: "unixsk.img", Magic: MagicUnixSk, Prefix: MagicImgCommon,
		Entry: func() proto.Message { return &sk_unix.UnixSkEntry{} }}
	KindInetSk = &Kind{Name: "INETSK", File: "inetsk.img", Magic: MagicInetSk, Prefix: MagicImgCommon,
		Entry: func() proto.Message { return &sk_inet.InetSkEntry{} }}
	KindPacketSk = &Kind{Name: "PACKETSK", File: "packetsk.img", Magic: MagicPacketSk, Prefix: MagicImgCommon,
		Entry: func() proto.Message { return &packet_sock.PacketSockEntry{} }}
	KindNetlinkSk = &Kind{Name: "NETLINK_SK", File: "netlinksk.img", Magic: MagicNetlinkSk, Prefix: MagicImgCommon,
		Entry: func() proto.Message { return &sk_netlink.NetlinkSkEntry{} }}
	KindSkQueues = &Kind{Name: "SK_QUEUES", File: "sk-queues.img", Magic: MagicSkQueues, Prefix: MagicImgCommon,
		Entry: func() proto.Message { return &sk_packet.SkPacketEntry{} }, Payload: SkQueuePayload}
	KindTCPStream = &Kind{Name: "TCP_STREAM", File: "tcp-stream-%x.img", Magic: MagicTCPStream, Prefix: MagicImgCommon,
		Entry: func() proto.Message { return &tcp_stream.TcpStreamEntry{} }, Payload: TCPStreamPayload}
	KindGhostFile = &Kind{Name: "GHOST_FILE", File: "ghost-file-%x.img", Magic: MagicGhostFile, Prefix: MagicImgCommon,
		Head:    func() proto.Message { return &ghost_file.GhostFileEntry{} },
		Entry:   func() proto.Message { return &ghost_file.GhostChunkEntry{} },
		Payload: GhostPayload}
	KindRemapFpath = &Kind{Name: "REMAP_FPATH", File: "remap-fpath.img", Magic: MagicRemapFpath, Prefix: MagicImgCommon,
		Entry: func() proto.Message { return &remap_file_path.RemapFilePathEntry{} }}
	KindFileLocks = &Kind{Name: "FILE_LOCKS", File: "filelocks.img", Magic: MagicFileLocks, Prefix: MagicImgCommon,
		Entry: func() proto.Message { return &file_lock.FileLockEntry{} }}
	KindTTYFiles = &Kind{Name: "TTY_FILES", File: "tty.img", Magic: MagicTTYFiles, Prefix: MagicImgCommon,
		Entry: func() proto.Message { return &tty.TtyFileEntry{} }}
	KindTTYInfo = &Kind{Name: "TTY_INFO", File: "tty-info.img", Magic: MagicTTYInfo, Prefix: MagicImgCommon,
		Entry: func() proto.Message { return &tty.TtyInfoEntry{} }}
	KindTTYData = &Kind{Name: "TTY_DATA", File: "tty-data.img", Magic: MagicTTYData, Prefix: MagicImgCommon,
		Entry: func() proto.Message { return &tty.TtyDataEntry{} }}
	KindMemfdInode = &Kind{Name: "MEMFD_INODE", File: "memfd.img", Magic: MagicMemfdInode, Prefix: MagicImgCommon,
		Entry: func() proto.Message { return &memfd.MemfdInodeEntry{} }}
	KindTimerfd = &Kind{Name: "TIMERFD", File: "timerfd.img", Magic: MagicTimerfd, Prefix: MagicImgCommon,
		Entry: func() proto.Message { return &timerfd.TimerfdEntry{} }}
	KindSignal = &Kind{Name: "SIGNAL", File: "signal-p-%d.img", Magic: MagicSignal, Prefix: MagicImgCommon,
		Entry: func() proto.Message { return &siginfo.SiginfoEntry{} }}
	KindITimers = &Kind{Name: "ITIMERS", File: "itimers-%d.img", Magic: MagicITimers, Prefix: MagicImgCommon,
		Entry: func() proto.Message { return &timer.ItimerEntry{} }}
	KindPosixTimers = &Kind{Name: "POSIX_TIMERS", File: "posix-timers-%d.img", Magic: MagicPosixTimers, Prefix: MagicImgCommon,
		Entry: func() proto.Message { return &timer.PosixTimerEntry{} }}
	KindRlimit = &Kind{Name: "RLIMIT", File: "rlimit-%d.img", Magic: MagicRlimit, Prefix: MagicImgCommon,
		Entry: func() proto.Message { return &rlimit.RlimitEntry{} }}
	KindUTSNS = &Kind{Name: "UTSNS", File: "utsns-%d.img", Magic: MagicUTSNS, Prefix: MagicImgCommon,
		Entry: func() proto.Message { return &utsns.UtsnsEntry{} }}
	KindIPCVar = &Kind{Name: "IPC_VAR", File: "ipcns-var-%d.img", Magic: MagicIPCVar, Prefix: MagicImgCommon,
		Entry: func() proto.Message { return &ipc_var.IpcVarEntry{} }}
	KindIPCNSShm = &Kind{Name: "IPCNS_SHM", File: "ipcns-shm-%d.img", Magic: MagicIPCNSShm, Prefix: MagicImgCommon,
		Entry: func() proto.Message { return &ipc_shm.IpcShmEntry{} }, Payload: IPCShmPayload}
	KindIPCNSMsg = &Kind{Name: "IPCNS_MSG", File: "ipcns-msg-%d.img", Magic: MagicIPCNSMsg, Prefix: MagicImgCommon,
		Entry: func() proto.Message { return &ipc_msg.IpcMsgEntry{} }, Payload: IPCMsgPayload}
	KindIPCNSSem = &Kind{Name: "IPCNS_SEM", File: "ipcns-sem-%d.img", Magic: MagicIPCNSSem, Prefix: MagicImgCommon,
		Entry: func() proto.Message { return &ipc_sem.IpcSemEntry{} }, Payload: IPCSemPayload}
	KindMnts = &Kind{Name: "MNTS", File: "mountpoints-%d.img", Magic: MagicMnts, Prefix: MagicImgCommon,
		Entry: func() proto.Message { return &mnt.MntEntry{} }}
	KindNetdev = &Kind{Name: "NETDEV", File: "netdev-%d.img", Magic: MagicNetdev, Prefix: MagicImgCommon,
		Entry: func() proto.Message { return &netdev.NetDeviceEntry{} }}
	KindNetNS = &Kind{Name: "NETNS", File: "netns-%d.img", Magic: MagicNetNS, Prefix: MagicImgCommon,
		Entry: func() proto.Message { return &netdev.NetnsEntry{} }}
	KindUserNS = &Kind{Name: "USERNS", File: "userns-%d.img", Magic: MagicUserNS, Prefix: MagicImgCommon,
		Entry: func() proto.Message { return &userns.UsernsEntry{} }}
	KindPidNS = &Kind{Name: "PIDNS", File: "pidns-%d.img", Magic: MagicPidNS, Prefix: MagicImgCommon,
		Entry: func() proto.Message { return &pidns.PidnsEntry{} }}
	KindTimeNS = &Kind{Name: "TIMENS", File: "timens-%d.img", Magic: MagicTimeNS, Prefix: MagicImgCommon,
		Entry: func() proto.Message { return &timens.TimensEntry{} }}
	KindCgroup = &Kind{Name: "CGROUP", File: "cgroup.img", Magic: MagicCgroup, Prefix: MagicImgCommon,
		Entry: func() proto.Message { return &cgroup.CgroupEntry{} }}
	KindSeccomp = &Kind{Name: "SECCOMP", File: "seccomp.img", Magic: MagicSeccomp, Prefix: MagicImgCommon,
		Entry: func() proto.Message { return &seccomp.SeccompEntry{} }}
	KindCPUInfo = &Kind{Name: "CPUINFO", File: "cpuinfo.img", Magic: MagicCPUInfo, Prefix: MagicImgCommon,
		Entry: func() proto.Message { return &cpuinfo.CpuinfoEntry{} }}
	KindTunfile = &Kind{Name: "TUNFILE", File: "tunfile.img", Magic: MagicTunfile, Prefix: MagicImgCommon,
		Entry: func() proto.Message { return &tun.TunfileEntry{} }}
	KindBinfmtMisc = &Kind{Name: "BINFMT_MISC", File: "binfmt-misc-%d.img", Magic: MagicBinfmtMisc, Prefix: MagicImgCommon,
		Entry: func() proto.Message { return &binfmt_misc.BinfmtMiscEntry{} }}
	KindAutofs = &Kind{Name: "AUTOFS", File: "autofs.img", Magic: MagicAutofs, Prefix: MagicImgCommon,
		Entry: func() proto.Message { return &autofs.AutofsEntry{} }}
	KindApparmor = &Kind{Name: "APPARMOR", File: "apparmor.img", Magic: MagicApparmor, Prefix: MagicImgCommon,
		Entry: func() proto.Message { return &apparmor.ApparmorEntry{} }}
	KindBpfmapFile = &Kind{Name: "BPFMAP_FILE", File: "bpfmap-file.img", Magic: MagicBpfmapFile, Prefix: MagicImgCommon,
		Entry: func() proto.Message { return &bpfmap_file.BpfmapFileEntry{} }}
	KindBpfmapData = &Kind{Name: "BPFMAP_DATA", File: "bpfmap-data.img", Magic: MagicBpfmapData, Prefix: MagicImgCommon,
		Entry: func() proto.Message { return &bpfmap_data.BpfmapDataEntry{} }, Payload: BpfmapPayload}
	KindStats = &Kind{Name: "STATS", File: "stats-%s", Magic: MagicStats, Prefix: MagicImgService,
		Entry: func() proto.Message { return &stats.StatsEntry{} }}
	KindIrmapCache = &Kind{Name: "IRMAP_CACHE", File: "irmap-cache", Magic: MagicIrmapCache, Prefix: MagicImgService,
		Entry: func() proto.Message { return &fh.IrmapCacheEntry{} }}
)

// Kinds lists every kind crest knows, for lookups by magic.
var Kinds = []*Kind{
	KindInventory, KindPstree, KindCore, KindIDs, KindMM, KindCreds, KindVMAs,
	KindPagemap, KindFdinfo, KindFiles, KindFS, KindRegFiles, KindExtFiles,
	KindNSFiles, KindEventfd, KindEventpoll, KindEventpollTfd, KindSignalfd,
	KindInotify, KindInotifyWd, KindFanotify, KindFanotifyMark, KindPipes,
	KindPipesData, KindFifo, KindFifoData, KindSigact, KindUnixSk, KindInetSk,
	KindPacketSk, KindNetlinkSk, KindSkQueues, KindTCPStream, KindGhostFile,
	KindRemapFpath, KindFileLocks, KindTTYFiles, KindTTYInfo, KindTTYData,
	KindMemfdInode, KindTimerfd, KindSignal, KindITimers, KindPosixTimers,
	KindRlimit, KindUTSNS, KindIPCVar, KindIPCNSShm, KindIPCNSMsg, KindIPCNSSem,
	KindMnts, KindNetdev, KindNetNS, KindUserNS, KindPidNS, KindTimeNS,
	KindCgroup, KindSeccomp, KindCPUInfo, KindTunfile, KindBinfmtMisc,
	KindAutofs, KindApparmor, KindBpfmapFile, KindBpfmapData, KindStats,
	KindIrmapCache,
}

var kindByMagic = func() map[Magic]*Kind {
	m := make(map[Magic]*Kind, len(Kinds))
	for _, k := range Kinds {
		m[k.Magic] = k
	}
	return m
}()

// KindOf returns the kind with magic m, or nil.
func KindOf(m Magic) *Kind { return kindByMagic[m] }
