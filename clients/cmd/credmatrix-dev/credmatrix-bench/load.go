package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/credmatrix/credmatrix/clients/cmd/credmatrix-dev/procstack"
)

// op is one call of a caller; it returns how many units it did (records
// for a batch, 1 otherwise).
type op func(ctx context.Context, caller int) (int, error)

// measured is what one load run measured.
type measured struct {
	units   int64
	calls   int
	elapsed time.Duration
	lat     []time.Duration // sorted
	errs    int64
	err     error // the first
}

func (m measured) perSecond() float64 {
	if m.elapsed <= 0 {
		return 0
	}
	return float64(m.units) / m.elapsed.Seconds()
}

// quantile returns the q-quantile (0..1) of the sorted latencies in ms.
func (m measured) quantile(q float64) float64 {
	if len(m.lat) == 0 {
		return 0
	}
	return float64(m.lat[int(q*float64(len(m.lat)-1))]) / float64(time.Millisecond)
}

// drive runs callers goroutines calling o back to back: for warm first
// (not counted), then for dur. Only calls that start and end inside the
// measured window count, and units/s is over the window. A caller stops at
// its first error (counted, the first one kept).
func drive(ctx context.Context, callers int, warm, dur time.Duration, o op) measured {
	return driveFrom(ctx, time.Now(), callers, warm, dur, o)
}

// driveFrom is drive with the warm-up starting at begin.
func driveFrom(ctx context.Context, begin time.Time, callers int, warm, dur time.Duration, o op) measured {
	mstart, mend := begin.Add(warm), begin.Add(warm+dur)
	var (
		wg    sync.WaitGroup
		units atomic.Int64
		errs  atomic.Int64
		mu    sync.Mutex
		first error
	)
	lat := make([][]time.Duration, callers)
	for c := range callers {
		wg.Go(func() {
			l := make([]time.Duration, 0, 4096)
			for ctx.Err() == nil {
				t0 := time.Now()
				if !t0.Before(mend) {
					break
				}
				n, err := o(ctx, c)
				t1 := time.Now()
				if err != nil {
					if ctx.Err() != nil {
						break
					}
					errs.Add(1)
					mu.Lock()
					if first == nil {
						first = err
					}
					mu.Unlock()
					break
				}
				if !t0.Before(mstart) && !t1.After(mend) {
					units.Add(int64(n))
					l = append(l, t1.Sub(t0))
				}
			}
			lat[c] = l
		})
	}
	wg.Wait()
	all := slices.Concat(lat...)
	slices.Sort(all)
	return measured{units: units.Load(), calls: len(all), elapsed: dur, lat: all, errs: errs.Load(), err: first}
}

// sampler records each service's peak resident memory while it runs.
type sampler struct {
	procs map[string]*procstack.Proc
	stop  chan struct{}
	done  chan struct{}
	mu    sync.Mutex
	peak  map[string]float64 // MiB
}

func startSampler(procs map[string]*procstack.Proc, every time.Duration) *sampler {
	s := &sampler{procs: procs, stop: make(chan struct{}), done: make(chan struct{}), peak: map[string]float64{}}
	go func() {
		defer close(s.done)
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			s.sample()
			select {
			case <-s.stop:
				s.sample()
				return
			case <-t.C:
			}
		}
	}()
	return s
}

func (s *sampler) sample() {
	for name, p := range s.procs {
		if rss, err := rssMiB(p.Pid()); err == nil {
			s.mu.Lock()
			s.peak[name] = max(s.peak[name], rss)
			s.mu.Unlock()
		}
	}
}

// Stop stops sampling and returns the peaks.
func (s *sampler) Stop() map[string]float64 {
	close(s.stop)
	<-s.done
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.peak
}

// rssMiB reads a process's resident set size (VmRSS) from /proc.
func rssMiB(pid int) (float64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			f := strings.Fields(rest)
			if len(f) == 2 && f[1] == "kB" {
				kb, err := strconv.ParseFloat(f[0], 64)
				return kb / 1024, err
			}
		}
	}
	return 0, fmt.Errorf("no VmRSS in /proc/%d/status", pid)
}

// clockTicks is the unit of the CPU times in /proc/<pid>/stat (USER_HZ,
// 100 on Linux).
const clockTicks = 100

// cpuTime reads the user+system CPU time a process has used from /proc.
func cpuTime(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The command name (field 2) may hold spaces: count from after it.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, fmt.Errorf("/proc/%d/stat: no command name", pid)
	}
	f := strings.Fields(string(b[i+1:]))
	// f[0] is field 3 (state); utime and stime are fields 14 and 15.
	if len(f) < 13 {
		return 0, fmt.Errorf("/proc/%d/stat: %d fields", pid, len(f))
	}
	ut, err1 := strconv.ParseInt(f[11], 10, 64)
	st, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("/proc/%d/stat: bad utime/stime", pid)
	}
	return time.Duration(ut+st) * time.Second / clockTicks, nil
}

// cpuTimes reads the CPU time of each process and of this one ("client").
func cpuTimes(procs map[string]*procstack.Proc) map[string]time.Duration {
	out := map[string]time.Duration{}
	for name, p := range procs {
		if d, err := cpuTime(p.Pid()); err == nil {
			out[name] = d
		}
	}
	if d, err := cpuTime(os.Getpid()); err == nil {
		out["client"] = d
	}
	return out
}

// openFDs counts a process's open file descriptors from /proc.
func openFDs(pid int) (int, error) {
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	return len(ents), err
}

// loadAvg is the machine's 1-minute load average.
func loadAvg() float64 {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return -1
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return -1
	}
	v, _ := strconv.ParseFloat(f[0], 64)
	return v
}

// goroutines reads the go_goroutines gauge of a service's Prometheus
// endpoint.
func goroutines(ctx context.Context, metricsURL string) (int, error) {
	if metricsURL == "" {
		return 0, fmt.Errorf("metrics are off")
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, metricsURL, nil)
	if err != nil {
		return 0, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("%s: %s", metricsURL, resp.Status)
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "go_goroutines "); ok {
			v, err := strconv.ParseFloat(strings.TrimSpace(rest), 64)
			return int(v), err
		}
	}
	if err := sc.Err(); err != nil {
		return 0, err
	}
	return 0, fmt.Errorf("%s: no go_goroutines metric", metricsURL)
}
