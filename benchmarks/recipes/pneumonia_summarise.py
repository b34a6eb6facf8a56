import json,sys,collections
rows=collections.defaultdict(list)
for f in sys.argv[1:]:
    for line in open(f):
        name,js=line.rstrip('\n').split('\t',1)
        if not js.startswith('{'): print('ERR',name,js[:200]); continue
        rows[name].append(json.loads(js))
print(f"{'config':22s} {'rule':15s} {'vAUC':>6s} {'tAUC':>6s} {'tACC':>6s} {'minACC':>6s} {'minAUC':>6s} ep  train_s")
for name,rs in rows.items():
    for rule in ("best_val_auroc","last","best_val_loss"):
        br=[r["by_rule"][rule] if r.get("by_rule") else r for r in rs]
        m=lambda k: sum(b[k] for b in br)/len(br)
        ok = "PASS" if m("test_auroc")>=0.98 and m("test_acc")>=0.93 and len(br)>=3 else ""
        print(f"{name:22s} {rule:15s} {m('val_auroc'):.4f} {m('test_auroc'):.4f} {m('test_acc'):.4f} {min(b['test_acc'] for b in br):.4f} {min(b['test_auroc'] for b in br):.4f} {[b['epoch'] if 'epoch' in b else b['chosen_epoch'] for b in br]} {sum(r['train_s'] for r in rs)/len(rs):.0f} n={len(br)} {ok}")
