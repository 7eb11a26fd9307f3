package images

import "fmt"

// Magic is a 32-bit number that opens a CRIU image file. Most image files
// start with a prefix magic (MagicImgCommon or MagicImgService) followed by
// the magic of their kind; inventory.img starts with its own magic alone, and
// raw images (pages-N.img) have none.
//
// The values are CRIU's (criu/include/magic.h); they are part of the on-disk
// format and never change.
type Magic uint32

// Prefix magics.
const (
	MagicImgCommon  Magic = 0x54564319
	MagicImgService Magic = 0x55105940
)

// Image kind magics.
const (
	MagicInventory     Magic = 0x58313116
	MagicPstree        Magic = 0x50273030
	MagicCore          Magic = 0x55053847
	MagicIDs           Magic = 0x54432030
	MagicMM            Magic = 0x57492820
	MagicCreds         Magic = 0x54023547
	MagicVMAs          Magic = 0x54123737
	MagicPagemap       Magic = 0x56084025
	MagicFdinfo        Magic = 0x56213732
	MagicFiles         Magic = 0x56303138
	MagicFS            Magic = 0x51403912
	MagicRegFiles      Magic = 0x50363636
	MagicExtFiles      Magic = 0x59255641
	MagicNSFiles       Magic = 0x61394011
	MagicEventfdFile   Magic = 0x44523722
	MagicEventpollFile Magic = 0x45023858
	MagicEventpollTfd  Magic = 0x44433746
	MagicSignalfd      Magic = 0x57323820
	MagicInotifyFile   Magic = 0x48424431
	MagicInotifyWd     Magic = 0x54562009
	MagicFanotifyFile  Magic = 0x55096122
	MagicFanotifyMark  Magic = 0x56506035
	MagicPipes         Magic = 0x56513555
	MagicPipesData     Magic = 0x56453709
	MagicFifo          Magic = 0x58364939
	MagicFifoData      Magic = 0x59333054
	MagicSigact        Magic = 0x55344201
	MagicUnixSk        Magic = 0x54373943
	MagicInetSk        Magic = 0x56443851
	MagicPacketSk      Magic = 0x60454618
	MagicNetlinkSk     Magic = 0x58005614
	MagicSkQueues      Magic = 0x56264026
	MagicTCPStream     Magic = 0x51465506
	MagicGhostFile     Magic = 0x52583605
	MagicRemapFpath    Magic = 0x59133954
	MagicFileLocks     Magic = 0x54323616
	MagicTTYFiles      Magic = 0x59433025
	MagicTTYInfo       Magic = 0x59453036
	MagicTTYData       Magic = 0x59413026
	MagicMemfdInode    Magic = 0x48453499
	MagicTimerfd       Magic = 0x50493712
	MagicSignal        Magic = 0x59255647
	MagicITimers       Magic = 0x57464056
	MagicPosixTimers   Magic = 0x52603957
	MagicRlimit        Magic = 0x57113925
	MagicUTSNS         Magic = 0x54473203
	MagicIPCVar        Magic = 0x53115007
	MagicIPCNSShm      Magic = 0x46283044
	MagicIPCNSMsg      Magic = 0x55453737
	MagicIPCNSSem      Magic = 0x59573019
	MagicMnts          Magic = 0x55563928
	MagicNetdev        Magic = 0x57373951
	MagicNetNS         Magic = 0x55933752
	MagicUserNS        Magic = 0x55474906
	MagicPidNS         Magic = 0x61157326
	MagicTimeNS        Magic = 0x43114433
	MagicCgroup        Magic = 0x59383330
	MagicSeccomp       Magic = 0x64413049
	MagicCPUInfo       Magic = 0x61404013
	MagicTunfile       Magic = 0x57143751
	MagicBinfmtMisc    Magic = 0x67343323
	MagicAutofs        Magic = 0x49353943
	MagicApparmor      Magic = 0x59423047
	MagicBpfmapFile    Magic = 0x57506142
	MagicBpfmapData    Magic = 0x64324033
	MagicStats         Magic = 0x57093306
	MagicIrmapCache    Magic = 0x57004059
)

func (m Magic) String() string {
	if k := kindByMagic[m]; k != nil {
		return k.Name
	}
	switch m {
	case MagicImgCommon:
		return "IMG_COMMON"
	case MagicImgService:
		return "IMG_SERVICE"
	}
	return fmt.Sprintf("0x%08x", uint32(m))
}
