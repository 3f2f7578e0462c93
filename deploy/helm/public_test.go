package helm

import (
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"sigs.k8s.io/yaml"
)

type servicePort struct {
	Name       string `json:"name"`
	Port       int    `json:"port"`
	TargetPort any    `json:"targetPort"`
}

type serviceSpec struct {
	Type                     string            `json:"type"`
	ExternalTrafficPolicy    string            `json:"externalTrafficPolicy"`
	LoadBalancerSourceRanges []string          `json:"loadBalancerSourceRanges"`
	Selector                 map[string]string `json:"selector"`
	Ports                    []servicePort     `json:"ports"`
}

// TestPublicListenerExposure checks how the broker's public listener is
// exposed: its own Service that carries only the public port (never the
// mTLS port), a cert-manager Certificate for the public host, the Ingress
// or the LoadBalancer, and the broker's config pointing at the mounted
// certificate. No Service of any render exposes the mTLS port outside the
// cluster.
func TestPublicListenerExposure(t *testing.T) {
	def := render(t)
	prod := render(t, productionValues...)
	gh := render(t, githubRunnersValues...)
	publicName := name("broker") + "-public"
	const host = "credmatrix.ci.example.com"

	t.Run("default/off", func(t *testing.T) {
		for _, kind := range []string{"Ingress", "Certificate"} {
			if n := len(def.ofKind(kind)); n != 0 {
				t.Errorf("%d %s objects with the public listener off", n, kind)
			}
		}
		for _, s := range def.ofKind("Service") {
			if strings.HasSuffix(s.Metadata.Name, "-public") {
				t.Errorf("Service %s with the public listener off", s.Metadata.Name)
			}
		}
		if _, ok := configOf(t, def, "broker")["public"]; ok {
			t.Error("broker config has a public listener with broker.public.enabled=false")
		}
	})

	t.Run("production/broker-config-and-mount", func(t *testing.T) {
		got := configOf(t, prod, "broker")["public"]
		want := map[string]any{"listen_addr": ":8444", "tls": map[string]any{
			"cert_file": "/etc/credmatrix/public-tls/tls.crt", "key_file": "/etc/credmatrix/public-tls/tls.key"}}
		if diff := cmp.Diff(got, want); diff != "" {
			t.Errorf("broker public config (-got +want):\n%s", diff)
		}
		_, w := prod.workload(t, "broker")
		mounted := false
		for _, v := range w.Template.Spec.Volumes {
			mounted = mounted || (v.Name == "public-tls" && v.Secret != nil && v.Secret.SecretName == publicName+"-tls")
		}
		if !mounted {
			t.Errorf("broker does not mount the public certificate Secret %s-tls", publicName)
		}
		if _, ok := configOf(t, prod, "keyguard")["public"]; ok {
			t.Error("keyguard has a public listener that production values do not ask for")
		}
	})

	t.Run("production/certificate-for-the-public-host", func(t *testing.T) {
		type certSpec struct {
			SecretName string   `json:"secretName"`
			DNSNames   []string `json:"dnsNames"`
			URIs       []string `json:"uris"`
			Usages     []string `json:"usages"`
			IssuerRef  struct {
				Name string `json:"name"`
			} `json:"issuerRef"`
		}
		c := decodeSpec[certSpec](t, prod.get(t, "Certificate", publicName))
		want := certSpec{SecretName: publicName + "-tls", DNSNames: []string{host}, Usages: []string{"server auth", "digital signature"}}
		want.IssuerRef.Name = "letsencrypt-dns01"
		if diff := cmp.Diff(c, want); diff != "" {
			t.Errorf("public Certificate (-got +want):\n%s", diff)
		}
	})

	t.Run("production/ingress", func(t *testing.T) {
		ing := prod.get(t, "Ingress", publicName)
		if ing.Metadata.Annotations["nginx.ingress.kubernetes.io/backend-protocol"] != "GRPCS" {
			t.Errorf("Ingress annotations %v: want gRPC over TLS to the backend", ing.Metadata.Annotations)
		}
		type ingressSpec struct {
			IngressClassName string `json:"ingressClassName"`
			TLS              []struct {
				Hosts      []string `json:"hosts"`
				SecretName string   `json:"secretName"`
			} `json:"tls"`
			Rules []struct {
				Host string `json:"host"`
				HTTP struct {
					Paths []struct {
						Backend struct {
							Service struct {
								Name string `json:"name"`
								Port struct {
									Name string `json:"name"`
								} `json:"port"`
							} `json:"service"`
						} `json:"backend"`
					} `json:"paths"`
				} `json:"http"`
			} `json:"rules"`
		}
		s := decodeSpec[ingressSpec](t, ing)
		got := []string{s.IngressClassName, s.TLS[0].Hosts[0], s.TLS[0].SecretName, s.Rules[0].Host,
			s.Rules[0].HTTP.Paths[0].Backend.Service.Name, s.Rules[0].HTTP.Paths[0].Backend.Service.Port.Name}
		if diff := cmp.Diff(got, []string{"nginx", host, publicName + "-tls", host, publicName, "public"}); diff != "" {
			t.Errorf("Ingress (class, tls host, secret, rule host, backend, port) (-got +want):\n%s", diff)
		}
	})

	t.Run("github-runners/load-balancer", func(t *testing.T) {
		s := decodeSpec[serviceSpec](t, gh.get(t, "Service", publicName))
		if s.Type != "LoadBalancer" || s.ExternalTrafficPolicy != "Local" {
			t.Errorf("public Service type %s, externalTrafficPolicy %s; want LoadBalancer, Local", s.Type, s.ExternalTrafficPolicy)
		}
		if diff := cmp.Diff(s.Ports, []servicePort{{Name: "public", Port: 443, TargetPort: "public"}}); diff != "" {
			t.Errorf("public Service ports (-got +want):\n%s", diff)
		}
		if len(gh.ofKind("Ingress")) != 0 {
			t.Error("an Ingress besides the load balancer")
		}
		if got := gh.get(t, "Service", publicName).Metadata.Annotations["service.beta.kubernetes.io/aws-load-balancer-scheme"]; got != "internet-facing" {
			t.Errorf("load balancer scheme %q, want internet-facing", got)
		}
	})

	for _, r := range []struct {
		name string
		ms   manifests
	}{{"default", def}, {"production", prod}, {"github-runners", gh}} {
		t.Run(r.name+"/mtls-port-never-exposed", func(t *testing.T) {
			for _, o := range r.ms.ofKind("Service") {
				s := decodeSpec[serviceSpec](t, o)
				for _, p := range s.Ports {
					isGRPC := p.Name == "grpc" || p.TargetPort == "grpc"
					if isGRPC && s.Type != "ClusterIP" {
						t.Errorf("Service %s (%s) exposes the mTLS port", o.Metadata.Name, s.Type)
					}
					if strings.HasSuffix(o.Metadata.Name, "-public") && (isGRPC || p.TargetPort == "metrics") {
						t.Errorf("public Service %s carries port %s", o.Metadata.Name, p.Name)
					}
				}
			}
		})
	}
}

// renderNotes renders NOTES.txt with args. helm template does not print
// notes and helm install --dry-run needs a cluster, so the test renders a
// copy of the chart in which NOTES.txt is a named template output into a
// ConfigMap.
func renderNotes(t *testing.T, args ...string) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "credmatrix")
	if err := os.CopyFS(dir, os.DirFS(chartDir)); err != nil {
		t.Fatal(err)
	}
	notes, err := os.ReadFile(filepath.Join(dir, "templates", "NOTES.txt"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(dir, "templates", "NOTES.txt")); err != nil {
		t.Fatal(err)
	}
	tpl := `{{- define "test.notes" -}}` + string(notes) + `{{- end -}}`
	cm := "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: notes\ndata:\n  notes: |\n    {{- include \"test.notes\" . | nindent 4 }}\n"
	for name, body := range map[string]string{"_test_notes.tpl": tpl, "test-notes.yaml": cm} {
		if err := os.WriteFile(filepath.Join(dir, "templates", name), []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	full := append([]string{"template", "cm", dir, "--namespace", namespace, "--show-only", "templates/test-notes.yaml"}, args...)
	cmd := exec.Command(helmBinary(t), full...)
	cmd.Env = append(os.Environ(), "HELM_CACHE_HOME="+t.TempDir(), "HELM_CONFIG_HOME="+t.TempDir(), "HELM_DATA_HOME="+t.TempDir())
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("render notes: %v", err)
	}
	var o object
	if err := yaml.Unmarshal(out, &o); err != nil {
		t.Fatal(err)
	}
	return o.Data["notes"]
}

// TestNotesNameWhatThePodsNeed checks NOTES.txt lists what must exist
// before the pods start, for the values given: the broker's PostgreSQL
// Secret, an existing policy ConfigMap, the public endpoint.
func TestNotesNameWhatThePodsNeed(t *testing.T) {
	prod := renderNotes(t, productionValues...)
	for _, want := range []string{
		"broker PostgreSQL Secret: credmatrix-broker-postgres (key dsn",
		"trust policy ConfigMap: credmatrix-trust-policy (key policy.yaml",
		"audit PostgreSQL Secret: credmatrix-audit-postgres",
		"audit checkpoint key Secret: credmatrix-audit-checkpoint",
		"credmatrix.ci.example.com:443  via Ingress cm-credmatrix-broker-public",
		"CREDMATRIX_BROKER_ADDR=credmatrix.ci.example.com:443",
		"KMS keys of every ring",
		"keyguard PostgreSQL Secret: credmatrix-keyguard-postgres (key dsn",
		"keyguard key-version MAC key Secret: credmatrix-keyguard-keys (key awskms-mac-key",
	} {
		if !strings.Contains(prod, want) {
			t.Errorf("production NOTES lack %q:\n%s", want, prod)
		}
	}
	def := renderNotes(t)
	for _, absent := range []string{"PostgreSQL", "trust policy ConfigMap", "public listener"} {
		if strings.Contains(def, absent) {
			t.Errorf("default NOTES mention %q:\n%s", absent, def)
		}
	}
	if !slices.ContainsFunc(strings.Split(def, "\n"), func(l string) bool {
		return strings.Contains(l, "keyguard root key Secret: cm-credmatrix-keyguard-keys")
	}) {
		t.Errorf("default NOTES lack keyguard's root key Secret:\n%s", def)
	}
}
