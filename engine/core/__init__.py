"""What every other part shares and nothing above it: spec models (`spec`), the connector protocol
(`protocol`), the one error tree (`errors`), fault points for crash tests (`faults`), identifier quoting and
database error text (`sql`), secrets as values and their masking (`secrets`), YAML files with positions
(`yamlfile`), where connections for a spec may go and who the control plane is (`egress`). Imports no other
package of the project.
"""
