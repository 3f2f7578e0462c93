package helm

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"

	"github.com/credmatrix/credmatrix/platform/pgtest"
)

// chartDir is the chart, relative to this package.
const chartDir = "credmatrix"

// namespace is where the test renders the release.
const namespace = "credmatrix"

// helmBinary finds helm: $CREDMATRIX_HELM, else bin/helm of the repository
// (built by `make helm`). Without it the test skips, unless
// CREDMATRIX_REQUIRE_DEPS=1 (CI), where a missing helm is a failure: CI must
// never pass by skipping.
func helmBinary(t *testing.T) string {
	t.Helper()
	candidates := []string{os.Getenv("CREDMATRIX_HELM")}
	if abs, err := filepath.Abs(filepath.Join("..", "..", "bin", "helm")); err == nil {
		candidates = append(candidates, abs)
	}
	for _, c := range candidates {
		if c == "" {
			continue
		}
		if info, err := os.Stat(c); err == nil && !info.IsDir() {
			return c
		}
	}
	pgtest.MissingDependency(t, "helm", "run `make helm` (go install helm.sh/helm/v3/cmd/helm@v3.22.0 into bin/) or set CREDMATRIX_HELM")
	return ""
}

// helmTemplate runs `helm template` with args after the chart and returns
// stdout, stderr and whether helm succeeded.
func helmTemplate(t *testing.T, args ...string) (stdout, stderr string, ok bool) {
	t.Helper()
	full := append([]string{"template", "cm", chartDir, "--namespace", namespace}, args...)
	cmd := exec.Command(helmBinary(t), full...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	// helm must not read the developer's repositories or plugins.
	cmd.Env = append(os.Environ(), "HELM_CACHE_HOME="+t.TempDir(), "HELM_CONFIG_HOME="+t.TempDir(), "HELM_DATA_HOME="+t.TempDir())
	err := cmd.Run()
	var exit *exec.ExitError
	if err != nil && !errors.As(err, &exit) {
		t.Fatalf("run helm: %v", err)
	}
	return out.String(), errb.String(), err == nil
}

// The parts of Kubernetes objects the tests look at. sigs.k8s.io/yaml
// converts YAML to JSON, so json tags name the fields.
type meta struct {
	Name        string            `json:"name"`
	Namespace   string            `json:"namespace"`
	Labels      map[string]string `json:"labels"`
	Annotations map[string]string `json:"annotations"`
}

type object struct {
	APIVersion string            `json:"apiVersion"`
	Kind       string            `json:"kind"`
	Metadata   meta              `json:"metadata"`
	Data       map[string]string `json:"data"`
	StringData map[string]string `json:"stringData"`
	Spec       json.RawMessage   `json:"spec"`
	// AutomountServiceAccountToken is a ServiceAccount's.
	AutomountServiceAccountToken *bool `json:"automountServiceAccountToken"`
}

type seccomp struct {
	Type string `json:"type"`
}

type podSecurityContext struct {
	RunAsNonRoot   *bool    `json:"runAsNonRoot"`
	RunAsUser      *int64   `json:"runAsUser"`
	SeccompProfile *seccomp `json:"seccompProfile"`
}

type securityContext struct {
	RunAsNonRoot             *bool    `json:"runAsNonRoot"`
	RunAsUser                *int64   `json:"runAsUser"`
	Privileged               *bool    `json:"privileged"`
	AllowPrivilegeEscalation *bool    `json:"allowPrivilegeEscalation"`
	ReadOnlyRootFilesystem   *bool    `json:"readOnlyRootFilesystem"`
	SeccompProfile           *seccomp `json:"seccompProfile"`
	Capabilities             *struct {
		Add  []string `json:"add"`
		Drop []string `json:"drop"`
	} `json:"capabilities"`
}

type probe struct {
	Exec *struct {
		Command []string `json:"command"`
	} `json:"exec"`
	GRPC *struct {
		Port int `json:"port"`
	} `json:"grpc"`
	HTTPGet   json.RawMessage `json:"httpGet"`
	TCPSocket json.RawMessage `json:"tcpSocket"`
}

type envVar struct {
	Name      string          `json:"name"`
	Value     string          `json:"value"`
	ValueFrom json.RawMessage `json:"valueFrom"`
}

type container struct {
	Name            string           `json:"name"`
	Image           string           `json:"image"`
	Args            []string         `json:"args"`
	Env             []envVar         `json:"env"`
	SecurityContext *securityContext `json:"securityContext"`
	StartupProbe    *probe           `json:"startupProbe"`
	ReadinessProbe  *probe           `json:"readinessProbe"`
	LivenessProbe   *probe           `json:"livenessProbe"`
}

type volume struct {
	Name   string `json:"name"`
	Secret *struct {
		SecretName  string `json:"secretName"`
		DefaultMode *int   `json:"defaultMode"`
	} `json:"secret"`
	ConfigMap *struct {
		Name string `json:"name"`
	} `json:"configMap"`
	Projected *struct {
		Sources []struct {
			Secret *struct {
				Name string `json:"name"`
			} `json:"secret"`
		} `json:"sources"`
	} `json:"projected"`
	HostPath json.RawMessage `json:"hostPath"`
}

type podSpec struct {
	ServiceAccountName           string              `json:"serviceAccountName"`
	AutomountServiceAccountToken *bool               `json:"automountServiceAccountToken"`
	HostNetwork                  bool                `json:"hostNetwork"`
	HostPID                      bool                `json:"hostPID"`
	HostIPC                      bool                `json:"hostIPC"`
	SecurityContext              *podSecurityContext `json:"securityContext"`
	InitContainers               []container         `json:"initContainers"`
	Containers                   []container         `json:"containers"`
	Volumes                      []volume            `json:"volumes"`
}

type workloadSpec struct {
	Replicas *int `json:"replicas"`
	Template struct {
		Metadata meta    `json:"metadata"`
		Spec     podSpec `json:"spec"`
	} `json:"template"`
	VolumeClaimTemplates []json.RawMessage `json:"volumeClaimTemplates"`
}

type labelSelector struct {
	MatchLabels map[string]string `json:"matchLabels"`
}

type networkPolicySpec struct {
	PodSelector labelSelector `json:"podSelector"`
	PolicyTypes []string      `json:"policyTypes"`
	Ingress     []struct {
		Ports []struct {
			Port any `json:"port"`
		} `json:"ports"`
		From []networkPeer `json:"from"`
	} `json:"ingress"`
	Egress []struct {
		Ports []struct {
			Port     any    `json:"port"`
			Protocol string `json:"protocol"`
		} `json:"ports"`
		To []networkPeer `json:"to"`
	} `json:"egress"`
}

type networkPeer struct {
	PodSelector       *labelSelector `json:"podSelector"`
	NamespaceSelector *labelSelector `json:"namespaceSelector"`
	IPBlock           any            `json:"ipBlock"`
}

// manifests is one render.
type manifests []object

var docSep = regexp.MustCompile(`(?m)^---[ \t]*$`)

// render runs helm template and parses every document; a failed render
// fails the test.
func render(t *testing.T, args ...string) manifests {
	t.Helper()
	out, stderr, ok := helmTemplate(t, args...)
	if !ok {
		t.Fatalf("helm template %v failed: %s", args, stderr)
	}
	var ms manifests
	for _, doc := range docSep.Split(out, -1) {
		if strings.TrimSpace(stripComments(doc)) == "" {
			continue
		}
		var o object
		if err := yaml.Unmarshal([]byte(doc), &o); err != nil {
			t.Fatalf("parse rendered manifest: %v\n%s", err, doc)
		}
		if o.Kind == "" {
			t.Fatalf("rendered document without kind:\n%s", doc)
		}
		ms = append(ms, o)
	}
	return ms
}

func stripComments(doc string) string {
	var b strings.Builder
	for _, l := range strings.Split(doc, "\n") {
		if !strings.HasPrefix(strings.TrimSpace(l), "#") {
			b.WriteString(l + "\n")
		}
	}
	return b.String()
}

// ofKind returns the objects of the given kinds.
func (ms manifests) ofKind(kinds ...string) []object {
	var out []object
	for _, o := range ms {
		for _, k := range kinds {
			if o.Kind == k {
				out = append(out, o)
			}
		}
	}
	return out
}

// get returns the object of kind and name, failing the test when absent.
func (ms manifests) get(t *testing.T, kind, name string) object {
	t.Helper()
	for _, o := range ms {
		if o.Kind == kind && o.Metadata.Name == name {
			return o
		}
	}
	t.Fatalf("no %s %q rendered", kind, name)
	return object{}
}

// workload returns the StatefulSet or Deployment of a component.
func (ms manifests) workload(t *testing.T, component string) (object, workloadSpec) {
	t.Helper()
	for _, o := range ms.ofKind("Deployment", "StatefulSet") {
		if o.Metadata.Labels["app.kubernetes.io/component"] == component {
			return o, decodeSpec[workloadSpec](t, o)
		}
	}
	t.Fatalf("no workload for component %s", component)
	return object{}, workloadSpec{}
}

func decodeSpec[T any](t *testing.T, o object) T {
	t.Helper()
	var s T
	if err := json.Unmarshal(o.Spec, &s); err != nil {
		t.Fatalf("%s %s: decode spec: %v", o.Kind, o.Metadata.Name, err)
	}
	return s
}

// name is the resource name of a component in the test release.
func name(component string) string { return "cm-credmatrix-" + component }

// components are the three services.
var components = []string{"audit", "broker", "keyguard"}

// productionValues is the production-like values file CI renders.
var productionValues = []string{"-f", filepath.Join(chartDir, "ci", "production-values.yaml")}

// githubRunnersValues layers the GitHub-hosted runners example on the
// production values, as its comment says to.
var githubRunnersValues = append(append([]string(nil), productionValues...), "-f", filepath.Join(chartDir, "ci", "github-runners-values.yaml"))
