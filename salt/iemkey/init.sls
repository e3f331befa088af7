{#- Enforce "BigFix agent keys rotated since T" from pillar iemkey:rotated_since. #}
{%- set since = salt['pillar.get']('iemkey:rotated_since') %}
{%- if since not in (None, '') %}

iemkey-bigfix-agent-key-rotated:
  iemkey.rotated:
    - name: bigfix-agent-key
    - since: {{ since | string | yaml_dquote }}
    - wait: {{ salt['pillar.get']('iemkey:wait', 0) | int }}

{%- else %}

iemkey-rotated-since-not-set:
  test.succeed_without_changes:
    - name: pillar iemkey:rotated_since is not set, so no BigFix key rotation is enforced

{%- endif %}
