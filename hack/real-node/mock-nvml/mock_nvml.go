// A mock NVML for the NVIDIA device plugin (github.com/NVIDIA/k8s-device-plugin v0.18.0), so that
// the real plugin runs, registers with a real kubelet and answers its Allocate calls on a machine
// without GPUs.
//
// hack/real-node/build.sh adds this file to package main of cmd/nvidia-device-plugin with
// `go build -overlay`, and changes exactly one token in that package's main.go (in startPlugins):
//
//	nvmllib := nvml.New(                  ->   nvmllib := newMockNvml(
//		nvml.WithLibraryPath(...),               (the same arguments, ignored)
//	)
//
// so every user of that nvml.Interface (device discovery, the resource managers, health checks,
// gpuallocator's preferred allocation) talks to the mock. Nothing else of the plugin changes.
//
// The mock is go-nvml's own pkg/nvml/mock/dgxa100 (8 x "Mock NVIDIA A100-SXM4-40GB", driver
// 550.54.15, CUDA 12.4), with what the plugin calls but dgxa100 leaves unset (calling an unset
// mock method panics) filled in here:
//   - stable device UUIDs (dgxa100 draws random ones at every start; a real GPU keeps its UUID
//     across plugin and kubelet restarts, and the kubelet's checkpoint holds on to them):
//     GPU-4d4f434b-0000-4000-8000-00000000000<i> ("MOCK" in hex)
//   - GetTopologyCommonAncestor: a DGX A100's PCIe layout (pairs share a switch, four per CPU)
//   - GetNvLinkState: NOT_SUPPORTED (gpuallocator then sees no NVLinks; on a DGX they go to
//     NVSwitches, which it ignores anyway)
//   - health events (EventSetCreate, GetSupportedEventTypes, RegisterEvents, EventSet.Wait/Free):
//     no events, unless a test asks for one by writing a file
//     /var/lib/kubelet/device-plugins/mock-nvml/xid-<gpu index> holding an XID number (e.g. 79,
//     "GPU has fallen off the bus"): the next Wait returns that critical XID for that GPU once (the
//     file is renamed to *.delivered), and the plugin marks the GPU unhealthy as it would on a
//     real node. (That folder is the kubelet's device-plugin directory, which the plugin's pod
//     mounts; the kubelet's start-up cleanup removes files there but not folders.)
//   - GetMaxMigDeviceCount (7) and GetMigDeviceHandleByIndex (NOT_FOUND): MIG-capable GPUs with
//     no MIG device configured (dgxa100 models MIG profiles and GPU/compute instances, but has no
//     MIG device handles; see hack/real-node/README.md for why real MIG devices are out of reach)
//   - MIG_MOCK_ENABLED=<indexes> (environment, e.g. "0,1"): those GPUs report MIG mode enabled, to
//     see what the plugin does with MIG-enabled GPUs that have no MIG devices.
package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock/dgxa100"
	"k8s.io/klog/v2"
)

// Where tests drop XID files (see above).
const mockXidDir = "/var/lib/kubelet/device-plugins/mock-nvml"

func newMockNvml(_ ...nvml.LibraryOption) nvml.Interface {
	server := dgxa100.New()
	migEnabled := map[int]bool{}
	for _, s := range strings.Split(os.Getenv("MIG_MOCK_ENABLED"), ",") {
		if i, err := strconv.Atoi(strings.TrimSpace(s)); err == nil {
			migEnabled[i] = true
		}
	}
	for i, d := range server.Devices {
		dev := d.(*dgxa100.Device)
		dev.UUID = fmt.Sprintf("GPU-4d4f434b-0000-4000-8000-%012x", i)
		if migEnabled[i] {
			dev.MigMode = nvml.DEVICE_MIG_ENABLE
		}
		dev.GetTopologyCommonAncestorFunc = func(other nvml.Device) (nvml.GpuTopologyLevel, nvml.Return) {
			j, ret := other.GetIndex()
			if ret != nvml.SUCCESS {
				return 0, ret
			}
			switch {
			case i == j:
				return nvml.TOPOLOGY_INTERNAL, nvml.SUCCESS
			case i/2 == j/2:
				return nvml.TOPOLOGY_SINGLE, nvml.SUCCESS
			case i/4 == j/4:
				return nvml.TOPOLOGY_NODE, nvml.SUCCESS
			default:
				return nvml.TOPOLOGY_SYSTEM, nvml.SUCCESS
			}
		}
		// MIG-capable (as an A100 is) but no MIG device exists: what NVML answers on a GPU
		// without GPU/compute instances.
		dev.GetMaxMigDeviceCountFunc = func() (int, nvml.Return) {
			return 7, nvml.SUCCESS
		}
		dev.GetMigDeviceHandleByIndexFunc = func(int) (nvml.Device, nvml.Return) {
			return nil, nvml.ERROR_NOT_FOUND
		}
		dev.GetNvLinkStateFunc = func(int) (nvml.EnableState, nvml.Return) {
			return 0, nvml.ERROR_NOT_SUPPORTED
		}
		dev.GetSupportedEventTypesFunc = func() (uint64, nvml.Return) {
			return nvml.EventTypeXidCriticalError | nvml.EventTypeDoubleBitEccError | nvml.EventTypeSingleBitEccError, nvml.SUCCESS
		}
		dev.RegisterEventsFunc = func(uint64, nvml.EventSet) nvml.Return {
			return nvml.SUCCESS
		}
	}
	server.EventSetCreateFunc = func() (nvml.EventSet, nvml.Return) {
		return &mock.EventSet{
			FreeFunc: func() nvml.Return { return nvml.SUCCESS },
			WaitFunc: func(timeoutMs uint32) (nvml.EventData, nvml.Return) {
				deadline := time.Now().Add(time.Duration(timeoutMs) * time.Millisecond)
				for {
					if e, ok := nextInjectedXid(server); ok {
						return e, nvml.SUCCESS
					}
					if time.Now().After(deadline) {
						return nvml.EventData{}, nvml.ERROR_TIMEOUT
					}
					time.Sleep(200 * time.Millisecond)
				}
			},
		}, nvml.SUCCESS
	}
	klog.Infof("mock NVML (go-nvml dgxa100): %d GPUs; XID injection through %s/xid-<index>", len(server.Devices), mockXidDir)
	return server
}

// nextInjectedXid returns (once) the XID a test wrote to mockXidDir/xid-<index>.
func nextInjectedXid(server *dgxa100.Server) (nvml.EventData, bool) {
	for i, d := range server.Devices {
		path := filepath.Join(mockXidDir, fmt.Sprintf("xid-%d", i))
		data, err := os.ReadFile(path)
		if err != nil {
			continue
		}
		xid, err := strconv.ParseUint(strings.TrimSpace(string(data)), 10, 64)
		if err != nil {
			xid = 79
		}
		_ = os.Rename(path, path+".delivered")
		klog.Infof("mock NVML: injecting XID %d on GPU %d", xid, i)
		return nvml.EventData{
			Device:            d,
			EventType:         nvml.EventTypeXidCriticalError,
			EventData:         xid,
			GpuInstanceId:     0xFFFFFFFF,
			ComputeInstanceId: 0xFFFFFFFF,
		}, true
	}
	return nvml.EventData{}, false
}
