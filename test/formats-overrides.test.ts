// Per-module overrides in the written configs (issue 13 item 3, format side): GPTQModel `dynamic` for gptq
// and quant4 (expected JSON written out by hand from GPTQModel's documented syntax), extra config groups for
// compressed-tensors with its own target precedence (exact name > "re:" regex > class name), awq refusing
// per-module settings, and every config read back per module (first match wins).

import { describe, expect, it } from "vitest";
import { ModelError, UsageError } from "../src/util/errors.js";
import { getFormat, settingsForModule } from "../formats/index.js";
import type { ModuleOverride, QuantSettings } from "../formats/types.js";

const gptq = getFormat("gptq");
const q4 = getFormat("quant4");
const ct = getFormat("compressed-tensors");
const awq = getFormat("awq");

const BASE: QuantSettings = { bits: 4, groupSize: 128, sym: true, actOrder: false };
const json = <T>(x: T): T => JSON.parse(JSON.stringify(x));

describe("gptq / quant4 dynamic", () => {
  const skipped = ["model.layers.0.mlp.down_proj"];
  const overrides: ModuleOverride[] = [{ pattern: ".*\\.mlp\\.down_proj", bits: 8, groupSize: 64 }];

  it("matches GPTQModel's documented syntax exactly: skips first as -:^name$, then +:pattern with only the keys given", () => {
    // As it appears in quantize_config.json / config.json (JSON text, backslashes escaped).
    const expected = String.raw`{"-:^model\\.layers\\.0\\.mlp\\.down_proj$": {}, "+:.*\\.mlp\\.down_proj": {"bits": 8, "group_size": 64}}`;
    for (const f of [gptq, q4]) {
      const cfg = f.quantizationConfig(BASE, skipped, overrides);
      expect(JSON.stringify(cfg.dynamic)).toBe(JSON.stringify(JSON.parse(expected)));
      expect(Object.keys(cfg.dynamic as object)).toEqual(["-:^model\\.layers\\.0\\.mlp\\.down_proj$", "+:.*\\.mlp\\.down_proj"]);
    }
    const sidecar = gptq.sidecarFiles(BASE, skipped, overrides)["quantize_config.json"]!;
    expect(sidecar).toContain(String.raw`"+:.*\\.mlp\\.down_proj": {
      "bits": 8,
      "group_size": 64
    }`);
    expect(JSON.parse(sidecar)).toEqual(gptq.quantizationConfig(BASE, skipped, overrides));
  });

  it("writes sym overrides, keeps the override order, and drops a repeated pattern (it could never match first)", () => {
    const cfg = gptq.quantizationConfig(BASE, [], [
      { pattern: ".*o_proj", sym: false },
      { pattern: ".*proj", bits: 3, groupSize: -1 },
      { pattern: ".*o_proj", bits: 8 },
      { pattern: "lm_head" },
    ]);
    expect(cfg.dynamic).toEqual({ "+:.*o_proj": { sym: false }, "+:.*proj": { bits: 3, group_size: -1 }, "+:lm_head": {} });
    expect(Object.keys(cfg.dynamic as object)).toEqual(["+:.*o_proj", "+:.*proj", "+:lm_head"]);
    expect(gptq.quantizationConfig(BASE, [], [])).not.toHaveProperty("dynamic");
  });

  it("round trips: config → settingsFromConfig for matching and non-matching modules, first match wins, skips before overrides", () => {
    const ovs: ModuleOverride[] = [
      { pattern: ".*\\.mlp\\.down_proj", bits: 8, groupSize: 64 },
      { pattern: ".*\\.mlp\\.", bits: 2, sym: false }, // also matches down_proj: the first wins
      { pattern: "model\\.layers\\.1\\.", groupSize: 32 },
    ];
    for (const f of [gptq, q4]) {
      const cfg = json(f.quantizationConfig(BASE, ["model.layers.0.mlp.down_proj"], ovs));
      const at = (name: string) => f.settingsFromConfig(cfg, name);
      expect(at("model.layers.0.mlp.down_proj")).toBeNull(); // skipped, although the first override matches
      expect(at("model.layers.3.mlp.down_proj")).toMatchObject({ bits: 8, groupSize: 64, sym: true });
      expect(at("model.layers.3.mlp.gate_proj")).toMatchObject({ bits: 2, groupSize: 128, sym: false });
      expect(at("model.layers.1.mlp.up_proj")).toMatchObject({ bits: 2, groupSize: 128, sym: false });
      expect(at("model.layers.1.self_attn.q_proj")).toMatchObject({ bits: 4, groupSize: 32, sym: true });
      expect(at("model.layers.11.self_attn.q_proj")).toMatchObject(BASE); // re.match: "model\.layers\.1\." needs the dot
      expect(at("xmodel.layers.1.self_attn.q_proj")).toMatchObject(BASE); // re.match anchors at the start
      expect(at("xmodel.layers.1.mlp.up_proj")).toMatchObject({ bits: 2 }); // ... so ".*" patterns match anywhere
      expect(f.settingsFromConfig(cfg)).toMatchObject(BASE);
      // what is read back is what the writer's own resolution says
      for (const name of ["model.layers.3.mlp.down_proj", "model.layers.3.mlp.gate_proj", "model.layers.1.self_attn.q_proj", "model.layers.2.self_attn.k_proj"]) {
        expect(at(name)).toMatchObject(settingsForModule(BASE, ovs, name));
      }
    }
  });

  it("refuses bit widths gptq cannot hold, on write (UsageError) and on read (ModelError)", () => {
    for (const f of [gptq, q4]) {
      expect(f.canHoldOverrides([{ pattern: ".*", bits: 8 }, { pattern: "x", groupSize: -1 }])).toBeNull();
      expect(f.canHoldOverrides([{ pattern: ".*down", bits: 5 }])).toBe(`per-module override ".*down": ${f.name} cannot hold 5-bit weights (it holds 2/3/4/8-bit)`);
      expect(f.canHoldOverrides([{ pattern: ".*", groupSize: 0 }])).toMatch(/group size 0 is not a positive integer or -1/);
      expect(f.canHoldOverrides([{ pattern: "(?P<x>a)", bits: 8 }])).toMatch(/^per-module override "\(\?P<x>a\)": invalid regular expression/);
      expect(() => f.quantizationConfig(BASE, [], [{ pattern: ".*down", bits: 5 }])).toThrow(UsageError);
      expect(() => f.quantizationConfig(BASE, [], [{ pattern: ".*down", bits: 5 }])).toThrow(/5-bit/);
      const cfg = { ...json(f.quantizationConfig(BASE, [])), dynamic: { "+:.*down": { bits: 5 } } };
      expect(() => f.settingsFromConfig(cfg, "model.layers.0.mlp.down_proj")).toThrow(ModelError);
      expect(() => f.settingsFromConfig(cfg, "model.layers.0.mlp.down_proj")).toThrow(
        `quantization_config (${f.name}) dynamic["+:.*down"]: bits 5 is not one of 2, 3, 4, 8`,
      );
      expect(f.settingsFromConfig(cfg, "model.layers.0.mlp.up_proj")).toMatchObject(BASE);
    }
  });
});

describe("compressed-tensors overrides", () => {
  it("writes each override as a config group before group_0, with its own num_bits/group_size/strategy/symmetric", () => {
    const cfg = ct.quantizationConfig({ ...BASE, actOrder: true }, ["model.layers.0.mlp.down_proj"], [
      { pattern: ".*\\.mlp\\.down_proj", bits: 8, groupSize: 64 },
      { pattern: ".*o_proj", groupSize: -1, sym: false },
    ]);
    expect(cfg.config_groups).toEqual({
      override_0: {
        targets: ["re:.*\\.mlp\\.down_proj"],
        weights: { num_bits: 8, type: "int", symmetric: true, group_size: 64, strategy: "group", actorder: "group", dynamic: false },
        input_activations: null,
        output_activations: null,
      },
      override_1: {
        targets: ["re:.*o_proj"],
        weights: { num_bits: 4, type: "int", symmetric: false, group_size: null, strategy: "channel", actorder: null, dynamic: false },
        input_activations: null,
        output_activations: null,
      },
      group_0: {
        targets: ["Linear"],
        weights: { num_bits: 4, type: "int", symmetric: true, group_size: 128, strategy: "group", actorder: "group", dynamic: false },
        input_activations: null,
        output_activations: null,
      },
    });
    expect(Object.keys(cfg.config_groups as object)).toEqual(["override_0", "override_1", "group_0"]);
    expect(cfg.ignore).toEqual(["lm_head", "model.layers.0.mlp.down_proj"]);
    const c = json(cfg);
    expect(ct.settingsFromConfig(c, "model.layers.0.mlp.down_proj")).toBeNull(); // ignore beats every target
    expect(ct.settingsFromConfig(c, "model.layers.4.mlp.down_proj")).toEqual({ bits: 8, groupSize: 64, sym: true, actOrder: true });
    expect(ct.settingsFromConfig(c, "model.layers.4.self_attn.o_proj")).toEqual({ bits: 4, groupSize: -1, sym: false, actOrder: false });
    expect(ct.settingsFromConfig(c, "model.layers.4.self_attn.q_proj")).toEqual({ ...BASE, actOrder: true });
    expect(ct.settingsFromConfig(c)).toEqual({ ...BASE, actOrder: true }); // global: the "Linear" group
  });

  it("keeps first-match-wins when the patterns do not sort in list order (compressed-tensors tries regexes sorted)", () => {
    // ".*\.mlp\..*" sorts before ".*down_proj" ('\' < 'd'), so both get an empty-matching "(?:k){0}" prefix.
    const ovs: ModuleOverride[] = [
      { pattern: ".*down_proj", bits: 8 },
      { pattern: ".*\\.mlp\\..*", groupSize: 32 },
    ];
    const cfg = json(ct.quantizationConfig(BASE, [], ovs)) as any;
    expect(cfg.config_groups.override_0.targets).toEqual(["re:(?:0){0}.*down_proj"]);
    expect(cfg.config_groups.override_1.targets).toEqual(["re:(?:1){0}.*\\.mlp\\..*"]);
    for (const name of ["model.layers.0.mlp.down_proj", "model.layers.0.mlp.up_proj", "model.layers.0.self_attn.v_proj"]) {
      expect(ct.settingsFromConfig(cfg, name)).toMatchObject(settingsForModule(BASE, ovs, name));
    }
    expect(ct.settingsFromConfig(cfg, "model.layers.0.mlp.down_proj")).toMatchObject({ bits: 8, groupSize: 128 });
    // already sorted: plain targets
    const sorted = json(ct.quantizationConfig(BASE, [], [...ovs].reverse())) as any;
    expect(sorted.config_groups.override_0.targets).toEqual(["re:.*\\.mlp\\..*"]);
    expect(sorted.config_groups.override_1.targets).toEqual(["re:.*down_proj"]);
    expect(ct.settingsFromConfig(sorted, "model.layers.0.mlp.down_proj")).toMatchObject({ bits: 4, groupSize: 32 });
  });

  it("resolves targets by compressed-tensors' precedence: exact name > re: regex > class name, whatever the group order", () => {
    const w = (num_bits: number, group_size: number) => ({ num_bits, type: "int", symmetric: true, group_size, strategy: "group" });
    const groups = {
      a_class: { targets: ["Linear"], weights: w(4, 128) },
      b_regex: { targets: ["re:.*mlp.*"], weights: w(8, 64) },
      c_exact: { targets: ["model.layers.0.mlp.up_proj"], weights: w(4, 32) },
    };
    const cfg = (order: (keyof typeof groups)[]) => ({
      quant_method: "compressed-tensors",
      format: "pack-quantized",
      config_groups: Object.fromEntries(order.map((k) => [k, groups[k]])),
      ignore: ["lm_head"],
    });
    for (const order of [["a_class", "b_regex", "c_exact"], ["c_exact", "b_regex", "a_class"], ["b_regex", "a_class", "c_exact"]] as (keyof typeof groups)[][]) {
      const c = cfg(order);
      expect(ct.settingsFromConfig(c, "model.layers.0.mlp.up_proj"), order.join()).toMatchObject({ bits: 4, groupSize: 32 }); // exact
      expect(ct.settingsFromConfig(c, "model.layers.1.mlp.up_proj"), order.join()).toMatchObject({ bits: 8, groupSize: 64 }); // regex
      expect(ct.settingsFromConfig(c, "model.layers.1.self_attn.q_proj"), order.join()).toMatchObject({ bits: 4, groupSize: 128 }); // class
      expect(ct.settingsFromConfig(c), order.join()).toMatchObject({ bits: 4, groupSize: 128 }); // global: the "Linear" group
    }
    // Two matching regexes: the one that sorts first wins (match_targets sorts), not the first group.
    const two = {
      quant_method: "compressed-tensors",
      format: "pack-quantized",
      config_groups: { g1: { targets: ["re:model.*"], weights: w(8, 64) }, g2: { targets: ["re:.*mlp.*"], weights: w(4, 32) } },
    };
    expect(ct.settingsFromConfig(two, "model.layers.1.mlp.up_proj")).toMatchObject({ bits: 4, groupSize: 32 });
    // A target repeated in a later group belongs to the later group (target → scheme map).
    const dup = {
      quant_method: "compressed-tensors",
      format: "pack-quantized",
      config_groups: { g1: { targets: ["Linear"], weights: w(8, 64) }, g2: { targets: ["Linear"], weights: w(4, 32) } },
    };
    expect(ct.settingsFromConfig(dup, "model.layers.1.mlp.up_proj")).toMatchObject({ bits: 4, groupSize: 32 });
    // No target matches: not quantized.
    const none = { ...cfg(["b_regex"]) };
    expect(ct.settingsFromConfig(none, "model.layers.1.self_attn.q_proj")).toBeNull();
    // The group that wins is the one validated: a bad override group is named.
    const bad = { ...cfg(["a_class", "b_regex"]) };
    (bad.config_groups.b_regex as any) = { targets: ["re:.*mlp.*"], weights: { ...w(5, 64) } };
    expect(() => ct.settingsFromConfig(bad, "model.layers.1.mlp.up_proj")).toThrow("quantization_config (compressed-tensors) config_groups.b_regex: num_bits 5 is not one of 2, 3, 4, 8");
    expect(ct.settingsFromConfig(bad, "model.layers.1.self_attn.q_proj")).toMatchObject({ bits: 4 });
  });

  it("refuses overrides whose bits compressed-tensors cannot hold (not 4/8)", () => {
    expect(ct.canHoldOverrides([{ pattern: ".*", bits: 8, groupSize: -1, sym: false }])).toBeNull();
    for (const bits of [2, 3, 5]) {
      expect(ct.canHoldOverrides([{ pattern: ".*down", bits }])).toBe(`per-module override ".*down": compressed-tensors cannot hold ${bits}-bit weights (it holds 4/8-bit)`);
      expect(() => ct.quantizationConfig(BASE, [], [{ pattern: ".*down", bits }])).toThrow(UsageError);
      expect(() => ct.sidecarFiles(BASE, [], [{ pattern: ".*down", bits }])).toThrow(UsageError);
    }
  });
});

describe("awq overrides", () => {
  it("refuses per-module bits/group/sym with a UsageError suggesting gptq or quant4", () => {
    const asym: QuantSettings = { bits: 4, groupSize: 128, sym: false, actOrder: false };
    for (const o of [{ bits: 8 }, { groupSize: 64 }, { sym: true }] as Omit<ModuleOverride, "pattern">[]) {
      const ovs = [{ pattern: ".*down_proj", ...o }];
      expect(awq.canHoldOverrides(ovs)).toBe(
        `awq cannot hold per-module settings (AutoAWQ's config has one bits and group_size for every module; override ".*down_proj"): use --format gptq or --format quant4`,
      );
      expect(() => awq.quantizationConfig(asym, [], ovs)).toThrow(UsageError);
      expect(() => awq.quantizationConfig(asym, [], ovs)).toThrow(/use --format gptq or --format quant4/);
      expect(() => awq.sidecarFiles(asym, [], ovs)).toThrow(UsageError);
    }
    // No overrides (or ones that set nothing): skip lists stay modules_to_not_convert.
    expect(awq.canHoldOverrides([])).toBeNull();
    const cfg = awq.quantizationConfig(asym, ["model.layers.0.mlp.down_proj"], [{ pattern: ".*" }]);
    expect(cfg.modules_to_not_convert).toEqual(["model.layers.0.mlp.down_proj"]);
    expect(awq.settingsFromConfig(cfg, "model.layers.0.mlp.down_proj")).toBeNull();
  });
});

describe("settingsForModule", () => {
  it("applies the first matching override (re.match, anchored at the start only)", () => {
    const ovs: ModuleOverride[] = [{ pattern: "model\\.layers\\.[0-3]\\.", bits: 8 }, { pattern: ".*", groupSize: 32 }];
    expect(settingsForModule(BASE, ovs, "model.layers.2.mlp.up_proj")).toEqual({ ...BASE, bits: 8 });
    expect(settingsForModule(BASE, ovs, "model.layers.12.mlp.up_proj")).toEqual({ ...BASE, groupSize: 32 }); // "[0-3]\." needs the dot after one digit
    expect(settingsForModule(BASE, ovs, "model.layers.5.mlp.up_proj")).toEqual({ ...BASE, groupSize: 32 });
    expect(settingsForModule(BASE, [], "x")).toBe(BASE);
  });
});
