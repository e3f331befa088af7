{#- Staged rollout: rotate a target in batches, check each batch, stop at the first failed batch,
    then report on the whole target. A minion without a BigFix agent passes its batch (nothing to
    rotate) unless pillar iemkey:require_agent is true.

    Pillar: iemkey:rotated_since; iemkey:orch:tgt, tgt_type, batch (size), wait. The docs' Formula
    page shows the command.
-#}
{%- set orch = salt['pillar.get']('iemkey:orch', {}) %}
{%- set since = salt['pillar.get']('iemkey:rotated_since') %}
{%- set tgt = orch.get('tgt', '*') %}
{%- set tgt_type = orch.get('tgt_type', 'glob') %}
{%- set size = orch.get('batch', 10) | int %}
{%- set wait = orch.get('wait', 60) | int %}
{%- set minions = salt['saltutil.runner']('iemkey.targets', tgt=tgt, tgt_type=tgt_type) %}
{%- if minions is mapping %}

iemkey-orch-no-targets:
  test.fail_without_changes:
    - name: {{ minions.get('error', 'iemkey.targets failed') | yaml_dquote }}

{%- elif since in (None, '') or size < 1 %}

iemkey-orch-needs-settings:
  test.fail_without_changes:
    - name: set pillar iemkey:rotated_since and a batch size of 1 or more (iemkey:orch:batch)

{%- else %}
{%-   for first in range(0, minions | length, size) %}
{%-     set batch = minions[first:first + size] %}
{%-     set n = loop.index %}

iemkey-rotate-batch-{{ n }}:
  salt.state:
    - tgt: {{ batch | join(',') }}
    - tgt_type: list
    - sls: iemkey
    - pillar:
        iemkey:
          rotated_since: {{ since | string | yaml_dquote }}
          wait: {{ wait }}
{%-     if n > 1 %}
    - require:
      - salt: iemkey-check-batch-{{ n - 1 }}
{%-     endif %}

iemkey-check-batch-{{ n }}:
  salt.runner:
    - name: iemkey.report
    - since: {{ since | string | yaml_dquote }}
    - tgt: {{ batch | join(',') }}
    - tgt_type: list
    - require:
      - salt: iemkey-rotate-batch-{{ n }}
{%-   endfor %}

iemkey-report:
  salt.runner:
    - name: iemkey.report
    - since: {{ since | string | yaml_dquote }}
    - tgt: {{ tgt | yaml_dquote }}
    - tgt_type: {{ tgt_type }}
    - order: last

{%- endif %}
