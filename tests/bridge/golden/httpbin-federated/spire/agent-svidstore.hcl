SVIDStore "sconecas_sessionmanager" {
    plugin_data {
        cas_connection_string                   = "https://cas.example.org:8081"
        cas_client_certificate                  = "/var/lib/spire/svidstore/cas-client.crt"
        cas_client_key                          = "/var/lib/spire/svidstore/cas-client.key"
        trust_anchor_certificate                = "/var/lib/spire/svidstore/cas-trust-anchor.pem"
        cas_predecessor_dir                     = "/var/lib/spire/svidstore/predecessors"
        svid_session_template_file              = "/var/lib/spire/svidstore/templates/svid-session.template"
        bundle_session_template_file            = "/var/lib/spire/svidstore/templates/bundle-session.template"
        federated_bundles_session_template_file = "/var/lib/spire/svidstore/templates/federated-bundles-session.template"
    }
}
