export PYTHONUNBUFFERED=1 PYTHONFAULTHANDLER=1
nvidia-smi -L; bash bench/full_scale.sh fa4 > /dev/null || exit 3
A="ATTENTION=flash4 RANDOM_WEIGHTS=1"
env ATTENTION=flash4 RANDOM_WEIGHTS=1 LAYOUTS=1x1,2x1 STEPS=4 FULL=2:50 timeout 330 bash bench/full_scale.sh parallel $OUT/par > $OUT/par.log 2>&1
grep -v "^\s*$" $OUT/par.log | grep -v Warn | tail -5 | cut -c1-400
(env ATTENTION=flash4 RANDOM_WEIGHTS=1 LAYOUTS=1x2 STEPS=2 FULL= bash bench/full_scale.sh parallel $OUT/seq > $OUT/seq.log 2>&1 &)
for i in $(seq 1 24); do sleep 5; [ -f $OUT/seq/scan.json ] && break; done
pkill -ABRT -f "bench/bench_parallel_e2[e]"; sleep 3; pkill -9 -f "bench/bench_parallel_e2[e]"
grep -v "^\s*$" $OUT/seq.log | grep -v Warn | grep -v "^  File.*site-packages" | tail -60 | cut -c1-300
GPUS="1 2" timeout 200 bash bench/full_scale.sh scaling $OUT/sc 2>&1 | tail -6 | cut -c1-300
