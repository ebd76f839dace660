#!/usr/bin/env bash
# Regenerate the published MNIST leaderboard from scratch, on the CPU (hours on two cores).
#
#   DATA=../shared/data KARP_HOME=~/.cache/karp-robust bash benchmarks/mnist_leaderboard.sh
#
# 1. trains the defenses on smallcnn with their registered recipes (fgsm-at on seeds 0, 1, 2) and
#    evaluates each on the first 1000 MNIST test points: clean and PGD-50 x 10 restarts;
# 2. PGD-40 against torchattacks.PGD (speed and accuracy) and peak memory at 1,000 vs 10,000 points;
# 3. robustness curves: PGD-20 at eps 0, 0.1, 0.2, 0.3, 0.4 for each defense;
# 4. AdvGAN and Defense-GAN (adaptive evaluation) at CPU scale (Defense-GAN L=50, R=4 on 100 points);
# 5. renders leaderboard/ from the store (this is the committed leaderboard);
# 6. with AUTOATTACK=1 (about 30 min per robust model on two cores): AutoAttack on every defense
#    (Defense-GAN: the standard protocol, L=50, R=4 on 100 points), and renders leaderboard/ again.
# Every number is a store record: `karp-robust reproduce <id>`.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA="${DATA:-$(cd .. && pwd)/shared/data}"
OUT="${OUT:-bench-out}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
mkdir -p "$OUT"

python benchmarks/train_mnist_defenses.py --data-dir "$DATA" --defenses fgsm-at --seeds 0,1,2 --no-autoattack \
    --out "$OUT/defenses.jsonl" | tee "$OUT/fgsm_at_seeds.md"
python benchmarks/train_mnist_defenses.py --data-dir "$DATA" --defenses standard --no-autoattack \
    --out "$OUT/defenses.jsonl" | tee "$OUT/standard.md"
python benchmarks/pgd_vs_torchattacks.py --data-dir "$DATA" --out "$OUT/pgd_speed.json" | tee "$OUT/pgd_speed.md"
python benchmarks/pgd_vs_torchattacks.py --data-dir "$DATA" --memory --out "$OUT/pgd_memory.json" | tee "$OUT/pgd_memory.md"
python benchmarks/train_mnist_defenses.py --data-dir "$DATA" --defenses pgd-at,trades --no-autoattack \
    --out "$OUT/defenses.jsonl" | tee "$OUT/pgd_at_trades.md"
for defense in standard fgsm-at pgd-at trades; do
  python -m robustbench_karp evaluate --model smallcnn --dataset mnist --defense "$defense" --data-dir "$DATA" \
      --no-download --eps 0,0.1,0.2,0.3,0.4 --attack pgd --attack-arg steps=20 --n-examples 1000 | tee -a "$OUT/sweeps.md"
done
python benchmarks/gan_mnist.py --data-dir "$DATA" --n-examples 1000 --advgan-epochs 2 --advgan-train-size 20000 \
    --dg-steps 50 --dg-restarts 4 --dg-gan-epochs 3 --dg-n-examples 100 --dg-attack-steps 20 \
    --out "$OUT/gan.json" | tee "$OUT/gan.md"
python -m robustbench_karp leaderboard build --dataset mnist
if [ "${AUTOATTACK:-0}" = 1 ]; then
  python benchmarks/train_mnist_defenses.py --data-dir "$DATA" --defenses standard,fgsm-at,pgd-at,trades,mart,n-fgsm \
      --out "$OUT/defenses_aa.jsonl" | tee "$OUT/autoattack.md"
  # Defense-GAN under the standard protocol at CPU scale: its adaptive attacks run first and AutoAttack
  # only on the points they leave (about 20 min here); at L=200, R=10 on 1000 points it would take days.
  python -m robustbench_karp evaluate --model smallcnn --dataset mnist --defense defense-gan --defense-arg steps=50 \
      --defense-arg restarts=4 --defense-arg epochs=3 --protocol standard --n-examples 100 --eps 0.3 \
      --data-dir "$DATA" --no-download --train | tee -a "$OUT/autoattack.md"
  python -m robustbench_karp leaderboard build --dataset mnist
fi
